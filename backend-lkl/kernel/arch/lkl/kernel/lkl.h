/* SPDX-License-Identifier: GPL-2.0 */
/* Internal interfaces shared by the files of the lkl port. */
#ifndef _LKL_KERNEL_LKL_H
#define _LKL_KERNEL_LKL_H

#include <asm/lkl_host.h>

struct task_struct;

extern const struct lkl_host_ops *lkl_ops;
extern int lkl_halting;
extern void *lkl_idle_sem;
extern void *lkl_halt_sem;

void lkl_boot_done(int result);
void __noreturn lkl_thread_leave(struct task_struct *t);
void lkl_thread_gone(void);
void lkl_user_return(void);
void __noreturn lkl_halt_all(void);
void lkl_bootmem_init(unsigned long mem_size);
void lkl_console_register(void);
long lkl_virtio_mmio_add(unsigned long base, unsigned long size, long irq);
int lkl_syscalls_init(void);

#endif

/* SPDX-License-Identifier: GPL-2.0 */
/* Internal interfaces shared by the files of the lkl port. */
#ifndef _LKL_KERNEL_LKL_H
#define _LKL_KERNEL_LKL_H

#include <asm/lkl_host.h>

struct task_struct;

extern const struct lkl_host_ops *lkl_ops;
extern int lkl_halting;
extern int lkl_idle_borrowed;
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

/* The CPU lock (cpu.c): held by whichever host thread runs kernel code. */
int lkl_cpu_init(void);
int lkl_cpu_lock(void);
int lkl_cpu_trylock(void);
void lkl_cpu_unlock(void);
void lkl_cpu_wake_waiters(void);
void lkl_cpu_serve_and_release(void);
int lkl_borrow_schedule(void);
int lkl_idle_borrow_schedule(void);
void lkl_idle_resume(void);
void lkl_idle_run_here(void);
void lkl_park_current(void);
extern long *lkl_borrow_jb;

/* Interrupts (irq.c). */
int lkl_irq_pending(void);
void lkl_run_pending_irqs(void);
int lkl_host_task_fn(void *arg);
struct task_struct *lkl_last_switched(void);
void *lkl_host_task_sem(void *ctx, struct task_struct *task);

#endif

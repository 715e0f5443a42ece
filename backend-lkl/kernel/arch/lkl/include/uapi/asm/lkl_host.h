/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The boundary between the library kernel and its host program.
 *
 * The host hands the kernel a table of operations (threads, semaphores,
 * thread-local storage, clocks, one timer, memory, device registers); the
 * kernel exports a few entry points (boot, system calls, interrupts, halt).
 * This header is the whole contract: the host side is written against it in
 * another language and licence, so keep it plain C types only.
 */
#ifndef _UAPI_ASM_LKL_HOST_H
#define _UAPI_ASM_LKL_HOST_H

struct lkl_host_ops {
	/* Console output (kernel log lines, not NUL terminated). */
	void (*print)(const char *str, int len);
	/* The kernel panicked; the host decides what to do (it must not return). */
	void (*panic)(void);

	/* Counting semaphores. */
	void *(*sem_alloc)(int count);
	void (*sem_free)(void *sem);
	void (*sem_up)(void *sem);
	void (*sem_down)(void *sem);

	/* A new detached host thread running fn(arg); 0 on success. */
	int (*thread_create)(void (*fn)(void *), void *arg);

	/* Thread-local storage keys (destructor runs when a host thread ends). */
	int (*tls_alloc)(unsigned long *key, void (*destructor)(void *));
	void (*tls_free)(unsigned long key);
	int (*tls_set)(unsigned long key, void *data);
	void *(*tls_get)(unsigned long key);

	/* Monotonic and wall-clock time in nanoseconds. */
	unsigned long long (*time_ns)(void);
	unsigned long long (*realtime_ns)(void);

	/*
	 * The one kernel timer: raise LKL_TIMER_IRQ delta_ns from now (0 means
	 * cancel). Re-arming replaces the previous deadline.
	 */
	void (*timer_set)(unsigned long long delta_ns);

	/* Memory for the kernel's page allocator (one call at boot). */
	void *(*mem_alloc)(unsigned long size);
	void (*mem_free)(void *ptr);

	/*
	 * Register access for host-emulated devices: addr is an address inside
	 * a region the host registered (see lkl_virtio_mmio_add), size 1/2/4/8.
	 * Called from kernel context; must not block for long.
	 */
	int (*iomem_access)(unsigned long addr, void *val, int size, int write);
};

/* Interrupt lines: 0 unused, 1 the timer, 2 host requests, then devices. */
#define LKL_NR_IRQS		64
#define LKL_TIMER_IRQ		1
#define LKL_WAKE_IRQ		2
#define LKL_FIRST_DEVICE_IRQ	3

/* Library calls that are not Linux system calls (numbers above them). */
#define LKL_NR_BASE		4096
#define LKL_NR_VIRTIO_MMIO_ADD	(LKL_NR_BASE + 0)	/* base, size, irq */
#define LKL_NR_HALT		(LKL_NR_BASE + 1)

/*
 * Entry points (the only global symbols of the library object):
 *
 * lkl_start_kernel(ops, mem_size, cmdline): boots, returns 0 once the
 *     kernel is ready for system calls, or a negative errno.
 * lkl_syscall(nr, params[6]): runs Linux system call nr (generic numbering,
 *     asm-generic/unistd.h) or an LKL_NR_* call in a kernel task bound to
 *     the calling host thread; returns the result or -errno.
 * lkl_trigger_irq(irq): raise an interrupt from any host thread.
 * lkl_halted(): 1 once the kernel has halted and all its threads have ended.
 */
int lkl_start_kernel(const struct lkl_host_ops *ops, unsigned long mem_size,
		     const char *cmdline);
long lkl_syscall(long nr, long *params);
void lkl_trigger_irq(int irq);

#endif

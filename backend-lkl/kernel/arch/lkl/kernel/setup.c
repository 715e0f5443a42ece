// SPDX-License-Identifier: GPL-2.0
/*
 * Boot and halt of the library kernel.
 *
 * lkl_start_kernel() runs start_kernel() on a new host thread (which then
 * becomes the idle task) and waits until pid 1 has finished the kernel's
 * own initialisation. pid 1 "executes" /init through a binary format of
 * ours that does nothing, so kernel_init() returns as if the new program
 * had started; pid 1 then serves the host (see syscalls.c).
 */
#include <linux/binfmts.h>
#include <linux/init.h>
#include <linux/stat.h>
#include <linux/time64.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/err.h>
#include <linux/init_syscalls.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/reboot.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/start_kernel.h>
#include <linux/string.h>
#include <asm/setup.h>
#include "lkl.h"

const struct lkl_host_ops *lkl_ops;
static unsigned long lkl_mem_size;
static void *boot_sem;
static int boot_result;

void __init setup_arch(char **cmdline_p)
{
	*cmdline_p = boot_command_line;
	lkl_console_register();
	lkl_bootmem_init(lkl_mem_size);
}

static void __ref lkl_run_kernel(void *arg)
{
	if (__builtin_setjmp(init_task.thread.exit_jb)) {
		lkl_thread_gone();
		return;
	}
	start_kernel();
}

void lkl_boot_done(int result)
{
	boot_result = result;
	lkl_ops->sem_up(boot_sem);
}

int __ref lkl_start_kernel(const struct lkl_host_ops *ops, unsigned long mem_size,
		     const char *cmdline)
{
	/* Kernel data cannot be reset: one boot per process. */
	if (lkl_ops)
		return -EBUSY;
	lkl_ops = ops;
	lkl_mem_size = mem_size;
	strscpy(boot_command_line, cmdline, COMMAND_LINE_SIZE);

	boot_sem = ops->sem_alloc(0);
	lkl_halt_sem = ops->sem_alloc(0);
	init_task.thread.sched_sem = ops->sem_alloc(0);
	if (!boot_sem || !lkl_halt_sem || lkl_cpu_init() ||
	    !init_task.thread.sched_sem)
		return -ENOMEM;
	if (lkl_syscalls_init())
		return -ENOMEM;

	if (ops->thread_create(lkl_run_kernel, NULL))
		return -ENOMEM;
	ops->sem_down(boot_sem);
	return boot_result;
}

/* The "program" pid 1 runs: accept it and return to pid 1's host loop. */
static int lkl_load_init(struct linux_binprm *bprm)
{
	return 0;
}

static struct linux_binfmt lkl_init_format = {
	.module = NULL,
	.load_binary = lkl_load_init,
};

static int __init lkl_fs_setup(void)
{
	struct file *f;

	/* Read-only open: a file open for writing could not be executed. */
	f = filp_open("/init", O_CREAT | O_RDONLY, 0700);
	if (IS_ERR(f))
		return PTR_ERR(f);
	fput(f);
	register_binfmt(&lkl_init_format);
	/* sysctls are set through /proc/sys, so proc is always mounted. */
	init_mkdir("/proc", 0555);
	return init_mount("proc", "/proc", "proc", 0, NULL);
}
late_initcall(lkl_fs_setup);

void free_initmem(void)
{
	/* Init sections are part of the host's image, not of our page pool. */
}

void machine_halt(void)
{
	lkl_halt_all();
}

void machine_power_off(void)
{
	lkl_halt_all();
}

void machine_restart(char *cmd)
{
	lkl_halt_all();
}

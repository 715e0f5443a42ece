/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* The generic (asm-generic) system call numbering, 64-bit flavour. */
#define __ARCH_WANT_NEW_STAT
#define __ARCH_WANT_SET_GET_RLIMIT
#define __ARCH_WANT_SYS_CLONE
#define __ARCH_WANT_SYS_CLONE3
#include <asm-generic/unistd.h>

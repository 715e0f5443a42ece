/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_STRING_H
#define _ASM_LKL_STRING_H
#include <linux/types.h>
#define __HAVE_ARCH_MEMCPY
extern void *memcpy(void *dest, const void *src, size_t n);
#define __HAVE_ARCH_MEMSET
extern void *memset(void *s, int c, size_t n);
#endif

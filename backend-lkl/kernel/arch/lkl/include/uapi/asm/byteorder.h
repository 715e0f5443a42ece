/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
#ifndef _UAPI_ASM_LKL_BYTEORDER_H
#define _UAPI_ASM_LKL_BYTEORDER_H

/* The library runs on little-endian hosts only (x86-64, arm64). */
#include <linux/byteorder/little_endian.h>

#endif

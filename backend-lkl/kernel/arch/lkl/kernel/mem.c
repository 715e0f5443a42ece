// SPDX-License-Identifier: GPL-2.0
/* The page allocator's memory: one host allocation, identity-mapped. */
#include <linux/memblock.h>
#include <linux/mm.h>
#include <linux/pfn.h>
#include "lkl.h"

unsigned long memory_start, memory_end;
void *empty_zero_page;
static void *mem_base;

void __init lkl_bootmem_init(unsigned long mem_size)
{
	/* Align to the largest buddy block so the memory map starts clean. */
	unsigned long align = PAGE_SIZE << MAX_PAGE_ORDER;
	unsigned long max_zone_pfns[MAX_NR_ZONES] = { 0 };

	mem_size = ALIGN(mem_size, PAGE_SIZE);
	mem_base = lkl_ops->mem_alloc(mem_size + align);
	if (!mem_base)
		panic("lkl: the host could not give %lu bytes of memory\n",
		      mem_size);
	memory_start = ALIGN((unsigned long)mem_base, align);
	memory_end = memory_start + mem_size;

	min_low_pfn = PFN_UP(memory_start);
	max_low_pfn = PFN_DOWN(memory_end);
	max_pfn = max_low_pfn;
	high_memory = (void *)memory_end;

	memblock_add(memory_start, mem_size);
	empty_zero_page = memblock_alloc(PAGE_SIZE, PAGE_SIZE);
	if (!empty_zero_page)
		panic("lkl: no memory for the zero page\n");

	max_zone_pfns[ZONE_NORMAL] = max_pfn;
	free_area_init(max_zone_pfns);
}

void __init mem_init(void)
{
	set_max_mapnr(max_low_pfn - min_low_pfn);
	memblock_free_all();
}

/* Runs as init inside a UML guest: does a task's AVX state survive the
 * page faults the UML kernel handles for it? Each round loads a ymm
 * register, stores to a page the task has never touched (a fault the
 * kernel serves through a signal to its stub), and reads the register
 * back; then glibc's memcpy (AVX on such CPUs) copies into fresh pages
 * and the copy is compared. Prints one line per check and powers off. */
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <unistd.h>

#define ROUNDS 512

static int registers(void)
{
	unsigned char *fresh = mmap(0, ROUNDS * 4096, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int lost = 0;

	for (int i = 0; i < ROUNDS; i++) {
		__m256i want = _mm256_set_epi32(i, i + 1, i + 2, i + 3, i + 4, i + 5, i + 6, i + 7);
		__m256i got;

		__asm__ volatile("vmovdqu %1, %%ymm10\n\t"
				 "movb $1, (%2)\n\t"
				 "vmovdqu %%ymm10, %0"
				 : "=m"(got)
				 : "m"(want), "r"(fresh + (size_t)i * 4096)
				 : "xmm10", "memory");
		if (memcmp(&want, &got, sizeof(want)))
			lost++;
	}
	printf("ymm register kept across %d page faults: lost in %d\n", ROUNDS, lost);
	return lost;
}

static int copies(void)
{
	static unsigned char source[1 << 20];
	size_t len = sizeof(source);
	int wrong = 0;

	for (size_t i = 0; i < len; i++)
		source[i] = (unsigned char)(i * 131 + (i >> 9));
	for (int round = 0; round < 8; round++) {
		unsigned char *fresh = mmap(0, len, PROT_READ | PROT_WRITE,
					    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		memcpy(fresh, source, len);
		if (memcmp(fresh, source, len))
			wrong++;
		munmap(fresh, len);
	}
	printf("memcpy of 1 MiB into fresh pages: wrong in %d of 8\n", wrong);
	return wrong;
}

int main(void)
{
	int bad = registers() + copies();

	printf("%s\n", bad ? "RESULT bad" : "RESULT good");
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}

// Vector-ISA dispatch for the CPU loops: the loops are written to auto-vectorize and
// target_clones picks the widest vector ISA at load time (the extension is otherwise built for
// baseline x86-64).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NLCORE_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NLCORE_CPU_CLONES
#endif

#include "allocator/cpu_features.h"

#if KVPAGE_X86
#include <cpuid.h>
#endif

namespace kvpage::internal {
namespace {

CpuFeatures DetectCpuFeatures() {
  CpuFeatures cpu;
#if KVPAGE_X86
  // __builtin_cpu_supports also checks that the OS saves the YMM / ZMM
  // state. F16C is CPUID.1:ECX[29] (clang 14's __builtin_cpu_supports does
  // not know "f16c").
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  cpu.f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  cpu.avx = __builtin_cpu_supports("avx");
  cpu.avx2 = __builtin_cpu_supports("avx2");
  cpu.fma = __builtin_cpu_supports("fma");
  cpu.avx512f = __builtin_cpu_supports("avx512f");
  cpu.avx512bw = __builtin_cpu_supports("avx512bw");
  cpu.avx512dq = __builtin_cpu_supports("avx512dq");
  cpu.avx512vl = __builtin_cpu_supports("avx512vl");
#endif
  return cpu;
}

}  // namespace

const CpuFeatures& HostCpuFeatures() {
  static const CpuFeatures features = DetectCpuFeatures();
  return features;
}

}  // namespace kvpage::internal

// allocator/cpu_features.h — what this x86-64 CPU (and its OS) can run,
// detected once per process; the conversion and quantization kernels pick
// their SIMD paths from it. The build assumes only x86-64 (or another
// architecture, where every feature reads false and the portable loops run).
//
// Usage:
//   if (HostCpuFeatures().Avx2FmaF16c()) { /* the AVX2 kernels */ }
//
// Thread-safe: the first call detects (a C++ static), later calls read.
#ifndef KVPAGE_ALLOCATOR_CPU_FEATURES_H_
#define KVPAGE_ALLOCATOR_CPU_FEATURES_H_

// KVPAGE_X86: 1 where the SIMD kernels are compiled (x86, with per-function
// target attributes), 0 elsewhere.
#if defined(__x86_64__) || defined(__i386__)
#define KVPAGE_X86 1
#else
#define KVPAGE_X86 0
#endif

namespace kvpage::internal {

// Each flag: the CPU has the instructions and, for the AVX families, the OS
// saves the YMM / ZMM state (what __builtin_cpu_supports checks).
struct CpuFeatures {
  bool avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;

  // F16C conversions of 8 values (ConvertElements' f16 path).
  [[nodiscard]] bool AvxF16c() const { return avx && f16c; }
  // The AVX2 quantization kernels' set.
  [[nodiscard]] bool Avx2FmaF16c() const { return avx2 && fma && f16c; }
  // The AVX-512 quantization kernels' set (which also use AVX2, FMA, F16C).
  [[nodiscard]] bool Avx512FBwDqVl() const {
    return Avx2FmaF16c() && avx512f && avx512bw && avx512dq && avx512vl;
  }
};

// This machine's features, detected on the first call. O(1) after it.
[[nodiscard]] const CpuFeatures& HostCpuFeatures();

}  // namespace kvpage::internal

#endif  // KVPAGE_ALLOCATOR_CPU_FEATURES_H_

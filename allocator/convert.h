// allocator/convert.h — element conversion between f32, f16 and bf16: the
// kernels behind Update() (f32 in, cache dtype stored) and Gather() (stored
// dtype out as f32). Narrowing rounds to nearest, ties to even; NaN stays NaN
// (quiet), infinities and signed zeros are kept, f16 subnormals are exact.
//
// The array kernels pick an F16C/AVX path at run time when the CPU has it
// (checked once); the build does not assume it. Thread-safe: pure functions.
#ifndef KVPAGE_ALLOCATOR_CONVERT_H_
#define KVPAGE_ALLOCATOR_CONVERT_H_

#include <cstdint>

#include "kvpage/dtype.h"

namespace kvpage::internal {

[[nodiscard]] uint16_t F32ToF16(float value);
[[nodiscard]] float F16ToF32(uint16_t bits);
[[nodiscard]] uint16_t F32ToBF16(float value);
[[nodiscard]] float BF16ToF32(uint16_t bits);

// Converts `count` elements from `src` (of `from`) into `dst` (of `to`).
// Equal types copy bytes; f16 <-> bf16 goes through f32 (exact widening, one
// rounding). `src` and `dst` must not overlap. O(count).
void ConvertElements(const void* src, DType from, void* dst, DType to,
                     int64_t count);

// The largest magnitude the quantized formats represent: f16's largest
// finite value, the range of their scales and minimums.
inline constexpr float kQuantRangeMax = 65504.0f;

// True when each of the `count` elements at `src` (of `dtype`) is a number
// with |x| <= kQuantRangeMax: no NaN, no infinity, nothing f16 cannot hold.
// Compares the magnitude bits (no float arithmetic): with AVX2 (picked at
// run time) an unsigned maximum over 512 bytes at a time, then the portable
// loop for the rest. No alignment needed. O(count).
[[nodiscard]] bool AllWithinQuantRange(const void* src, DType dtype,
                                       int64_t count);
// The portable loop alone, which tests hold the AVX2 path to.
[[nodiscard]] bool AllWithinQuantRangePortable(const void* src, DType dtype,
                                               int64_t count);

// The portable loops, exposed so that tests can hold the SIMD path to them.
void F32ToF16Portable(const float* src, uint16_t* dst, int64_t count);
void F16ToF32Portable(const uint16_t* src, float* dst, int64_t count);

// True when ConvertElements uses the F16C path for f16 on this CPU.
[[nodiscard]] bool HasF16cKernels();

}  // namespace kvpage::internal

#endif  // KVPAGE_ALLOCATOR_CONVERT_H_

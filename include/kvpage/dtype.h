// kvpage/dtype.h — the element types kvpage stores and accepts, their sizes
// and names. The lowest layer of the vocabulary: the allocator's conversion
// and quantization kernels and the cache's configuration both use it
// (kvpage/config.h includes it).
//
// Usage:
//   static_assert(kvpage::DTypeSize(kvpage::DType::kBF16) == 2);
//   std::string_view name = kvpage::DTypeName(config.dtype);  // "f16"
//
// Plain values and constexpr functions: thread-safe.
#ifndef KVPAGE_DTYPE_H_
#define KVPAGE_DTYPE_H_

#include <cstdint>
#include <string_view>

namespace kvpage {

// Element type of stored or supplied keys and values.
enum class DType : uint8_t { kF32, kF16, kBF16 };

// Bytes of one element of `dtype`: 4 for f32, 2 for f16 and bf16. O(1).
[[nodiscard]] constexpr int DTypeSize(DType dtype) {
  return dtype == DType::kF32 ? 4 : 2;
}

// "f32", "f16" or "bf16"; "unknown" for a value outside the enum. O(1).
[[nodiscard]] constexpr std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
  }
  return "unknown";
}

}  // namespace kvpage

#endif  // KVPAGE_DTYPE_H_

#include "baselines/contiguous_buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"

namespace kvpage::baselines {

absl::StatusOr<ContiguousBuffer> ContiguousBuffer::Create(
    const ContiguousShape& shape) {
  const int64_t bytes = 2 * shape.num_layers * shape.capacity *
                        shape.token_elems *
                        static_cast<int64_t>(sizeof(uint16_t));
  void* base = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "contiguous: cannot map %d bytes for a sequence", bytes));
  }
  if (shape.huge_pages) {
    madvise(base, static_cast<size_t>(bytes), MADV_HUGEPAGE);
  }
  return ContiguousBuffer(shape, static_cast<uint16_t*>(base), bytes);
}

ContiguousBuffer::ContiguousBuffer(const ContiguousShape& shape, uint16_t* base,
                                   int64_t bytes)
    : shape_(shape),
      base_(base),
      bytes_(bytes),
      length_(static_cast<size_t>(shape.num_layers), 0) {}

ContiguousBuffer::ContiguousBuffer(ContiguousBuffer&& other) noexcept
    : shape_(other.shape_),
      base_(std::exchange(other.base_, nullptr)),
      bytes_(other.bytes_),
      length_(std::move(other.length_)) {}

ContiguousBuffer& ContiguousBuffer::operator=(
    ContiguousBuffer&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) munmap(base_, static_cast<size_t>(bytes_));
    shape_ = other.shape_;
    base_ = std::exchange(other.base_, nullptr);
    bytes_ = other.bytes_;
    length_ = std::move(other.length_);
  }
  return *this;
}

ContiguousBuffer::~ContiguousBuffer() {
  if (base_ != nullptr) munmap(base_, static_cast<size_t>(bytes_));
}

uint16_t* ContiguousBuffer::Plane(int layer, bool values) const {
  return base_ +
         (2 * layer + (values ? 1 : 0)) * shape_.capacity * shape_.token_elems;
}

absl::Status ContiguousBuffer::Update(int layer, absl::Span<const uint16_t> k,
                                      absl::Span<const uint16_t> v,
                                      int64_t seq_len) {
  const int64_t elems = shape_.token_elems;
  const int64_t n = static_cast<int64_t>(k.size()) / elems;
  int64_t& length = length_[static_cast<size_t>(layer)];
  const int64_t start = seq_len - n;
  if (k.size() != v.size() || n * elems != static_cast<int64_t>(k.size()) ||
      start < 0 || start > length || seq_len > shape_.capacity) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "contiguous: %d tokens to length %d of layer %d (length %d, room "
        "for %d)",
        n, seq_len, layer, length, shape_.capacity));
  }
  std::memcpy(Plane(layer, false) + start * elems, k.data(),
              k.size() * sizeof(uint16_t));
  std::memcpy(Plane(layer, true) + start * elems, v.data(),
              v.size() * sizeof(uint16_t));
  length = seq_len;
  return absl::OkStatus();
}

void ContiguousBuffer::Truncate(int64_t seq_len) {
  for (int64_t& length : length_) length = std::min(length, seq_len);
}

int64_t ContiguousBuffer::CopyFrom(const ContiguousBuffer& from) {
  int64_t copied = 0;
  for (int layer = 0; layer < shape_.num_layers; ++layer) {
    const int64_t length = from.Length(layer);
    const size_t bytes =
        static_cast<size_t>(length * shape_.token_elems) * sizeof(uint16_t);
    for (bool values : {false, true}) {
      std::memcpy(Plane(layer, values), from.Plane(layer, values), bytes);
    }
    length_[static_cast<size_t>(layer)] = length;
    copied += 2 * static_cast<int64_t>(bytes);
  }
  return copied;
}

absl::Span<const uint16_t> ContiguousBuffer::Keys(int layer) const {
  return {Plane(layer, false),
          static_cast<size_t>(Length(layer) * shape_.token_elems)};
}

absl::Span<const uint16_t> ContiguousBuffer::Values(int layer) const {
  return {Plane(layer, true),
          static_cast<size_t>(Length(layer) * shape_.token_elems)};
}

}  // namespace kvpage::baselines

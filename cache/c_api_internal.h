// cache/c_api_internal.h — what the files of the C API (c_api.cc,
// c_api_read.cc) share: the thread's last error, the registry of live
// handles, Guard() and the checks of a caller's pointers and structs.
#ifndef KVPAGE_CACHE_C_API_INTERNAL_H_
#define KVPAGE_CACHE_C_API_INTERNAL_H_

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "kvpage/kv_cache.h"
#include "kvpage/kvpage_c.h"
#include "kvpage/snapshot.h"

namespace kvpage::c_api {
// A storage's release callback, called after its cache is gone.
struct Release {
  void (*fn)(void* context) = nullptr;
  void* context = nullptr;
};
}  // namespace kvpage::c_api

struct kvpage_cache {
  std::unique_ptr<kvpage::KVCache> cache;
  std::vector<kvpage_layer_policy> layer_policies;  // kvpage_cache_config's
  kvpage::c_api::Release release;  // kvpage_cache_create_with_storage's
};

struct kvpage_snapshot {
  kvpage::Snapshot snapshot;
};

namespace kvpage::c_api {

// A caller's config, checked and converted (c_api.cc).
absl::StatusOr<CacheConfig> ToConfig(const kvpage_config* in);

// Makes a handle of a cache Create returned (or fails with its status);
// `release` runs after the cache is destroyed. (c_api.cc)
kvpage_status Adopt(absl::StatusOr<std::unique_ptr<KVCache>> cache,
                    Release release, kvpage_cache** out);

// The message kvpage_last_error() returns on this thread.
std::string& LastError();

// What a live handle is: a kvpage_cache* passed for a kvpage_snapshot* (or
// the reverse) is refused like any pointer kvpage never made.
enum class HandleKind : uint8_t { kCache, kSnapshot };

// The handles kvpage_cache_create and kvpage_snapshot_read made that have
// not been destroyed, with their kinds.
struct Handles {
  absl::Mutex mu;
  absl::flat_hash_map<const void*, HandleKind> live ABSL_GUARDED_BY(mu);
};
Handles& Registry();

// Sets this thread's last error from a fixed message without throwing (the
// message is dropped if even that cannot be stored).
void SetError(const char* message) noexcept;

inline kvpage_status Fail(const absl::Status& s) {
  LastError() = std::string(s.message());
  return static_cast<kvpage_status>(s.code());
}

inline kvpage_status Return(const absl::Status& s) {
  return s.ok() ? KVPAGE_OK : Fail(s);
}

// Runs `body`; an exception becomes a status (building no Status, which
// could throw again).
template <typename Body>
kvpage_status Guard(Body&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    SetError("out of memory");
    return KVPAGE_RESOURCE_EXHAUSTED;
  } catch (...) {
    SetError("unexpected exception");
    return KVPAGE_INTERNAL;
  }
}

// Whether `handle` is a live handle of `kind`. Fast path: the handle this
// thread last found live, while no handle has been destroyed since (an
// atomic load); else the registry, under its mutex.
bool IsLive(const void* handle, HandleKind kind);

// Registers a new handle.
void Remember(const void* handle, HandleKind kind);

// Unregisters `handle`; false when it was not a live handle of `kind` (then
// the caller must not free it).
bool Forget(const void* handle, HandleKind kind);

// The int a caller stored in a C enum field, read as the int it is (a C++
// enum without a fixed type need not hold values outside its enumerators).
template <typename E>
int AsInt(const E& field) {
  static_assert(sizeof(E) == sizeof(int));
  int value = 0;
  std::memcpy(&value, &field, sizeof value);
  return value;
}

inline absl::Status CheckLive(const void* handle, HandleKind kind,
                              const char* what) {
  if (handle == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s is NULL", what));
  }
  if (!IsLive(handle, kind)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s %p is not a live handle (destroyed, or not made by kvpage)", what,
        handle));
  }
  return absl::OkStatus();
}
inline absl::Status CheckHandle(const kvpage_cache* cache, const char* what) {
  return CheckLive(cache, HandleKind::kCache, what);
}
inline absl::Status CheckHandle(const kvpage_snapshot* snapshot,
                                const char* what) {
  return CheckLive(snapshot, HandleKind::kSnapshot, what);
}

inline absl::Status CheckOut(const void* out, const char* what) {
  if (out == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("output %s is NULL", what));
  }
  return absl::OkStatus();
}

// The bytes of a caller's versioned struct: at least `struct_size` itself
// and at most ours.
inline absl::Status CheckSize(size_t struct_size, size_t ours,
                              const char* what) {
  if (struct_size < sizeof(size_t) || struct_size > (size_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s.struct_size is %d: set it to sizeof(%s) (or call its _init)", what,
        struct_size, what));
  }
  (void)ours;
  return absl::OkStatus();
}

// Copies the common prefix of a caller's struct and ours into `to`.
template <typename T>
inline void CopyIn(const T& from, T& to) {
  std::memcpy(static_cast<void*>(&to), &from,
              std::min(from.struct_size, sizeof(T)));
  to.struct_size = sizeof(T);
}

// The options of kvpage_match_options (NULL: the defaults).
inline absl::StatusOr<kvpage::MatchOptions> MatchOptionsOf(
    const kvpage_match_options* options) {
  kvpage::MatchOptions out;
  if (options == nullptr) return out;
  if (absl::Status s = CheckSize(options->struct_size, sizeof *options,
                                 "kvpage_match_options");
      !s.ok()) {
    return s;
  }
  kvpage_match_options in{};
  CopyIn(*options, in);
  if (in.leave_last_token != 0 && in.leave_last_token != 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("kvpage_match_options.leave_last_token is %d: 0 or 1",
                        in.leave_last_token));
  }
  out.leave_last_token = in.leave_last_token == 1;
  return out;
}

// Copies the common prefix of ours into a caller's struct and sets its
// struct_size to the bytes written: a caller with a newer, longer struct
// sees which of its fields this library filled.
template <typename T>
inline void CopyOut(const T& from, T* to) {
  const size_t n = std::min(to->struct_size, sizeof(T));
  std::memcpy(static_cast<void*>(to), &from, n);
  to->struct_size = n;
}

// An enum value a caller passed: in [0, count), or InvalidArgument.
inline absl::Status CheckEnum(int value, int count, const char* what) {
  if (value < 0 || value >= count) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s is %d, not one of its %d values", what, value, count));
  }
  return absl::OkStatus();
}

inline OverflowPolicy PolicyOf(kvpage_overflow_policy p) {
  switch (p) {
    case KVPAGE_POLICY_TRUNCATE:
      return OverflowPolicy::kTruncate;
    case KVPAGE_POLICY_SLIDING_WINDOW:
      return OverflowPolicy::kSlidingWindow;
    case KVPAGE_POLICY_CIRCULAR_BUFFER:
      return OverflowPolicy::kCircularBuffer;
    case KVPAGE_POLICY_ERROR:
      break;
  }
  return OverflowPolicy::kError;
}
inline kvpage_overflow_policy PolicyOf(OverflowPolicy p) {
  switch (p) {
    case OverflowPolicy::kTruncate:
      return KVPAGE_POLICY_TRUNCATE;
    case OverflowPolicy::kSlidingWindow:
      return KVPAGE_POLICY_SLIDING_WINDOW;
    case OverflowPolicy::kCircularBuffer:
      return KVPAGE_POLICY_CIRCULAR_BUFFER;
    case OverflowPolicy::kError:
      break;
  }
  return KVPAGE_POLICY_ERROR;
}

// CacheStats as the C struct.
kvpage_cache_stats FromStats(const CacheStats& s);

}  // namespace kvpage::c_api

#endif  // KVPAGE_CACHE_C_API_INTERNAL_H_

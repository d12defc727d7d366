// allocator/mutex.h — the mutex kvpage's thread-safe classes use: std::mutex
// with Abseil's thread-safety annotations, so that clang's -Wthread-safety
// checks ABSL_GUARDED_BY fields.
//
// Why not absl::Mutex: Debian ships Abseil prebuilt and uninstrumented, so
// ThreadSanitizer cannot see absl::Mutex's synchronization and reports false
// races (seen on the pool's free list); std::mutex is pthread underneath,
// which TSan intercepts. Uncontended lock/unlock costs the same.
#ifndef KVPAGE_ALLOCATOR_MUTEX_H_
#define KVPAGE_ALLOCATOR_MUTEX_H_

#include <mutex>

#include "absl/base/thread_annotations.h"

namespace kvpage::internal {

class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

// Holds `mu` for its scope.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->Lock();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace kvpage::internal

#endif  // KVPAGE_ALLOCATOR_MUTEX_H_

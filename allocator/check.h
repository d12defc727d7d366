// allocator/check.h — kvpage's three assertion levels (Abseil 20220623 has no
// CHECK). They guard internal invariants only: caller mistakes get a Status.
//
//   KVPAGE_ASSERT_LEVEL 0  release: no checks
//   KVPAGE_ASSERT_LEVEL 1  debug (default without NDEBUG): cheap O(1) checks
//   KVPAGE_ASSERT_LEVEL 2  expensive: also the O(n) walks (Validate() after
//                          every mutation), for the test suite
//
// A failed check prints the condition and aborts: it means kvpage has a bug,
// and continuing would corrupt an engine's cache.
#ifndef KVPAGE_ALLOCATOR_CHECK_H_
#define KVPAGE_ALLOCATOR_CHECK_H_

#ifndef KVPAGE_ASSERT_LEVEL
#ifdef NDEBUG
#define KVPAGE_ASSERT_LEVEL 0
#else
#define KVPAGE_ASSERT_LEVEL 1
#endif
#endif

namespace kvpage::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* cond);
}  // namespace kvpage::internal

#define KVPAGE_INTERNAL_CHECK(cond)                                   \
  do {                                                                \
    if (!(cond)) ::kvpage::internal::CheckFailed(__FILE__, __LINE__, #cond); \
  } while (0)

#if KVPAGE_ASSERT_LEVEL >= 1
#define KVPAGE_DCHECK(cond) KVPAGE_INTERNAL_CHECK(cond)
#else
#define KVPAGE_DCHECK(cond) \
  do {                      \
  } while (0)
#endif

#if KVPAGE_ASSERT_LEVEL >= 2
#define KVPAGE_XCHECK(cond) KVPAGE_INTERNAL_CHECK(cond)
#else
#define KVPAGE_XCHECK(cond) \
  do {                      \
  } while (0)
#endif

#endif  // KVPAGE_ALLOCATOR_CHECK_H_

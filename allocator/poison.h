// allocator/poison.h — AddressSanitizer poisoning of free blocks. Compiles to
// nothing unless the build runs under ASan.
#ifndef KVPAGE_ALLOCATOR_POISON_H_
#define KVPAGE_ALLOCATOR_POISON_H_

#if defined(__SANITIZE_ADDRESS__)
#define KVPAGE_HAS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVPAGE_HAS_ASAN 1
#endif
#endif
#ifndef KVPAGE_HAS_ASAN
#define KVPAGE_HAS_ASAN 0
#endif

#if KVPAGE_HAS_ASAN
#include <sanitizer/asan_interface.h>
#define KVPAGE_POISON(addr, size) ASAN_POISON_MEMORY_REGION((addr), (size))
#define KVPAGE_UNPOISON(addr, size) ASAN_UNPOISON_MEMORY_REGION((addr), (size))
#else
#define KVPAGE_POISON(addr, size) ((void)(addr), (void)(size))
#define KVPAGE_UNPOISON(addr, size) ((void)(addr), (void)(size))
#endif

#endif  // KVPAGE_ALLOCATOR_POISON_H_

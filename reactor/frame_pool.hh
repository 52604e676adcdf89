#pragma once
// frame_pool: where coroutine frames and other small per-connection objects
// live. One pool per thread, so a shard allocates and frees without a lock
// or an atomic.
//
// Why not glibc malloc: every connection is a few coroutine frames and a
// stream state, allocated together and freed together.
//   - malloc adds an 8-byte header to each block and rounds it up to 16
//     bytes. The pool has neither: sized delete tells it the size.
//   - Spawning a task spent 64% of its time in malloc/free (shardd-micro,
//     bench/README.md). A pool block is a pop and a push on a free list.
//
// Blocks come in classes of 16 bytes, up to max_pooled. Each class carves
// them from 64 KiB slabs. Slabs are never given back: the pool holds the
// peak number of live blocks, as Seastar's per-shard allocator does. A block
// freed on another thread joins that thread's free list, which is safe
// because slabs never go away.
//
// Under AddressSanitizer the pool hands every request to operator new, so
// that ASan still sees use-after-free and overflows of frames.

#include <cstddef>

namespace shardd::internal {

// Larger requests go to operator new. 1 KiB covers the frames of the echo
// and proxy paths (the largest is under 400 bytes).
inline constexpr std::size_t max_pooled = 1024;

void* pool_allocate(std::size_t n);
void pool_free(void* p, std::size_t n) noexcept;

// Mixed into a coroutine promise (or any class): `new` and sized `delete`
// through the pool.
struct pooled {
    static void* operator new(std::size_t n) { return pool_allocate(n); }
    static void operator delete(void* p, std::size_t n) noexcept { pool_free(p, n); }
};

}  // namespace shardd::internal

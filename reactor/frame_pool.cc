#include "reactor/frame_pool.hh"

#include <mutex>
#include <new>
#include <vector>

namespace shardd::internal {

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool pool_enabled = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool pool_enabled = false;
#else
constexpr bool pool_enabled = true;
#endif
#else
constexpr bool pool_enabled = true;
#endif

constexpr std::size_t granule = 16;  // alignof(std::max_align_t)
constexpr std::size_t classes = max_pooled / granule;
// A slab serves one class. 64 KiB: 64 blocks of the largest class, and few
// enough calls to operator new that its cost disappears.
constexpr std::size_t slab_bytes = 64 * 1024;

struct free_block {
    free_block* next;
};

// Every slab of every thread, so that they stay reachable (LeakSanitizer)
// after a thread's pool is gone; a thread's blocks may still be in use
// elsewhere then. Touched once per slab, hence the mutex.
struct slab_registry {
    std::mutex lock;
    std::vector<void*> slabs;
};
slab_registry& registry() {
    static auto* r = new slab_registry;  // never destroyed: frames outlive static destructors
    return *r;
}

struct thread_pool {
    free_block* free[classes] = {};

    void refill(std::size_t cls) {
        const std::size_t size = (cls + 1) * granule;
        void* slab = ::operator new(slab_bytes);
        {
            auto& r = registry();
            std::lock_guard g(r.lock);
            r.slabs.push_back(slab);
        }
        auto* bytes = static_cast<std::byte*>(slab);
        for (std::size_t off = 0; off + size <= slab_bytes; off += size) {
            auto* b = reinterpret_cast<free_block*>(bytes + off);
            b->next = free[cls];
            free[cls] = b;
        }
    }
};

thread_local thread_pool pool;

std::size_t class_of(std::size_t n) noexcept { return (n + granule - 1) / granule - 1; }

}  // namespace

void* pool_allocate(std::size_t n) {
    if (!pool_enabled || n == 0 || n > max_pooled) {
        return ::operator new(n);
    }
    const std::size_t cls = class_of(n);
    if (!pool.free[cls]) {
        pool.refill(cls);
    }
    free_block* b = pool.free[cls];
    pool.free[cls] = b->next;
    return b;
}

void pool_free(void* p, std::size_t n) noexcept {
    if (!p) {
        return;
    }
    if (!pool_enabled || n == 0 || n > max_pooled) {
        ::operator delete(p);
        return;
    }
    const std::size_t cls = class_of(n);
    auto* b = static_cast<free_block*>(p);
    b->next = pool.free[cls];
    pool.free[cls] = b;
}

}  // namespace shardd::internal

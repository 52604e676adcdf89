#pragma once
// io_memory: one page-aligned arena per executor, registered with io_uring as
// fixed buffers, and a buddy allocator over it.
//
// The arena is registered as ONE iovec, so a single fixed-buffer index (0)
// covers every block: a *_fixed operation passes the block's own address and
// buf_index 0, and the kernel only checks that [addr, addr + len) lies inside
// the registered iovec (validate_fixed_range() in io_uring/rsrc.c). One iovec
// also means one pin and one accounting step at start-up instead of one per
// buffer, and blocks can be any size without re-registering.
//
// What the kernel charges (io_uring/rsrc.c, io_uring/io_uring.c, 5.12 to 6.x):
// - Registering buffers calls io_account_mem() with the number of pages
//   pinned. If the ring's ctx->user is set, __io_account_mem() adds them to
//   the *user's* locked_vm (struct user_struct: shared by every process of
//   that uid) and fails with ENOMEM when the total would pass the registering
//   task's RLIMIT_MEMLOCK soft limit. Nothing is checked against memcg here.
// - ctx->user is set in io_uring_create(), i.e. at io_uring_setup() time, only
//   when the task creating the ring lacks CAP_IPC_LOCK in the initial user
//   namespace (`if (!ns_capable_noaudit(&init_user_ns, CAP_IPC_LOCK))`, which
//   was capable(), also init_user_ns, before commit 6adc2272aaaf in 2023). So
//   root on the host is exempt; "root" in a user namespace is not; dropping
//   the capability after the ring exists changes nothing for that ring.
// - Every ring accounts its own registration: the same arena registered on
//   the main and the poll ring is charged twice (memlock_required(2)).
//   IORING_REGISTER_CLONE_BUFFERS (6.12, io_register_clone_buffers() in
//   io_uring/rsrc.c) gives a second ring the first ring's registration
//   without accounting it again ("Since the memory is already accounted once,
//   don't account it again"; measured on 6.18: 0 pages). register_with()
//   clones where it can, so on 6.12+ the arena is charged once per shard.
// - What 5.12 changed (commit 26bfa89e25f4, "io_uring: place ring SQ/CQ arrays
//   under memcg memory limits") was the *rings*: their SQ/CQ arrays moved from
//   memlock to memcg. Its message: "We retain rlimit memlock for registered
//   buffers". The CAP_IPC_LOCK exemption is older (5.1's io_uring_create()).
//   And 6.14 moved the rings back: "io_uring: use region api for SQ/CQ"
//   (8078486e1d53, 81a4058e0cd0) allocate them through io_create_region(),
//   which calls __io_account_mem() when ctx->user is set. So on 6.14+ the
//   rings (and provided-buffer rings) count against the same limit as this
//   arena, and with RLIMIT_MEMLOCK 0 an unprivileged io_uring_setup() itself
//   fails with ENOMEM (seen on 6.18).
// - One iovec may be at most 1 GiB (io_validate_user_buf_range(): EFAULT
//   above SZ_1G), which is also config's cap on runtime.io_memory.
//
// Not thread-safe, by design: an io_memory belongs to one executor, and an
// executor is one thread. There are no locks and no atomics; another shard
// hands a buffer back through a cross-shard channel, never by calling free().

#include "reactor/expected.hh"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

struct io_uring;

namespace shardd {

struct io_buffer {
    std::byte* data = nullptr;
    // The whole block: the request rounded up to a power of two >= 4 KiB.
    std::size_t size = 0;
    // Index for *_fixed operations (always 0: one iovec), or -1 when the arena
    // was not registered at allocate() time; then use the non-fixed op.
    int buf_index = -1;
};

class io_memory {
public:
    // The smallest block and the alignment of every block: a page, which is
    // what O_DIRECT needs on every filesystem we care about.
    static constexpr std::size_t min_block = 4096;

    // mmap(MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE) of `bytes` rounded up to
    // min_block. Fails only if mmap fails (EINVAL for 0, ENOMEM).
    static expected<io_memory> create(std::size_t bytes);

    io_memory(io_memory&& other) noexcept;
    io_memory& operator=(io_memory&& other) noexcept;
    io_memory(const io_memory&) = delete;
    io_memory& operator=(const io_memory&) = delete;
    // munmap. It never touches the rings: they may already be gone. Declare
    // the arena before the rings that use it, so the rings are destroyed
    // first (io_uring_queue_exit drops the registration and the page pins).
    ~io_memory();

    // Bytes of RLIMIT_MEMLOCK that registering on `rings` rings charges when
    // the rings were created without CAP_IPC_LOCK and each ring registers its
    // own copy (kernels before 6.12): whole kernel pages, once per ring.
    // Saturates at SIZE_MAX. memlock_charge() says what register_with() did.
    std::size_t memlock_required(std::size_t rings = 1) const noexcept;
    // What the last register_with() charged, or would have charged had the
    // kernel let it: memlock_required(1) when the rings share one
    // registration (6.12+), once per ring otherwise. 0 before any attempt.
    std::size_t memlock_charge() const noexcept { return _charge; }
    // Whether registering on `rings` rings should fit: true if this process
    // has CAP_IPC_LOCK, else whether the soft limit, after
    // raise_memlock_limit(), covers memlock_required(rings). A hint for the
    // log line only: the kernel counts the uid's locked_vm across all its
    // processes, rings and (6.14+) ring memory, and ignores a CAP_IPC_LOCK
    // held only inside a user namespace. register_with() is the real test.
    bool memlock_allows(std::size_t rings = 1) const;

    // Registers the arena as one fixed buffer on the first ring and shares
    // that registration with the others (IORING_REGISTER_CLONE_BUFFERS,
    // 6.12+), or registers it again on each where the kernel cannot (EINVAL
    // before 6.12). Rings must have no fixed buffers yet. On any failure
    // (ENOMEM from memlock, EBUSY, EFAULT above 1 GiB, ...) it unregisters
    // from the rings it had already succeeded on and returns the error; the
    // arena stays usable, unregistered (buf_index -1). The caller logs one
    // warning and carries on. EBUSY if already registered, EINVAL for no
    // rings.
    std::error_code register_with(std::span<io_uring* const> rings);
    // Drops the registration from every ring it was made on. Only while those
    // rings are alive; in-flight fixed ops keep the kernel's reference.
    void unregister() noexcept;
    bool registered() const noexcept { return !_rings.empty(); }

    // A block of at least `bytes`, min_block-aligned, or nullopt when no free
    // block is large enough (or bytes is 0): the caller falls back to a heap
    // buffer and a non-fixed op. O(log n).
    std::optional<io_buffer> allocate(std::size_t bytes);
    // Returns a block from allocate(). False, and nothing changes, when `b` is
    // not a live block of this arena (double free, foreign pointer): a bug in
    // the caller, but not one worth taking the process down for. O(log n).
    bool free(const io_buffer& b) noexcept;

    std::size_t capacity() const noexcept { return _capacity; }
    std::size_t bytes_in_use() const noexcept { return _in_use; }
    std::byte* base() const noexcept { return _base; }

private:
    // Per-page allocator state, kept outside the arena: the arena is DMA
    // target memory, and a stray write by the kernel or a late completion must
    // not be able to corrupt the allocator.
    struct page_node {
        std::uint32_t next;
        std::uint32_t prev;
        std::uint8_t order;
        std::uint8_t state;  // page_state
    };

    io_memory(std::byte* base, std::size_t capacity);
    void push_free(std::uint32_t page, unsigned order) noexcept;
    void unlink_free(std::uint32_t page) noexcept;
    void release() noexcept;

    std::byte* _base = nullptr;
    std::size_t _capacity = 0;
    std::size_t _in_use = 0;
    unsigned _max_order = 0;
    std::vector<page_node> _pages;
    std::vector<std::uint32_t> _free_heads;  // one free list per order
    std::vector<io_uring*> _rings;           // rings the arena is registered on
    std::size_t _charge = 0;                 // memlock_charge()
};

// Raises RLIMIT_MEMLOCK's soft limit to the hard limit (process-wide) and
// returns the resulting soft limit in bytes; RLIM_INFINITY maps to SIZE_MAX.
expected<std::size_t> raise_memlock_limit();

// "4096 KiB", or "unlimited" for SIZE_MAX: the one unit of every
// locked-memory number in the messages, so that they add up. Rounded up: the
// kernel charges whole pages.
std::string memlock_kib(std::size_t bytes);

// Where an operator raises the limit, for the messages that name it.
inline constexpr const char* memlock_raise_hint =
    "raise LimitMEMLOCK= (systemd) or ulimit -l (docker run --ulimit memlock=)";

}  // namespace shardd

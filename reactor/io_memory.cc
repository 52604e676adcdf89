#include "reactor/io_memory.hh"

#include <bit>
#include <cerrno>
#include <liburing.h>
#include <limits>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <utility>

// The allocator is a binary buddy allocator rather than power-of-two size
// classes with free lists: size classes never give memory back between
// classes, so a burst of 4 KiB blocks would fragment the arena for good and a
// later 1 MiB request would fail although everything is free. Buddies
// coalesce on free, so the arena returns to its initial blocks whenever
// everything is freed, and both operations stay O(log n) (at most one split or
// merge per order). The cost is internal fragmentation up to 2x, acceptable
// for I/O buffers that are powers of two anyway.
//
// A capacity that is not a power of two pages is covered by its binary
// decomposition, largest block first (5 MiB = 4 MiB + 1 MiB). Each of those
// blocks is naturally aligned to its size, so the usual buddy arithmetic
// (buddy = page ^ (1 << order)) holds inside each of them; a merge is allowed
// only when the merged block lies inside the arena, which is exactly the
// condition for staying inside one of those top-level blocks.

namespace shardd {

namespace {

constexpr std::uint32_t nil = std::numeric_limits<std::uint32_t>::max();
constexpr unsigned page_shift = 12;  // log2(io_memory::min_block)
static_assert(io_memory::min_block == std::size_t{1} << page_shift);

enum page_state : std::uint8_t {
    interior = 0,  // inside a block, not its first page
    free_head = 1,
    used_head = 2,
};

std::size_t kernel_page_size() noexcept {
    const long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? static_cast<std::size_t>(p) : io_memory::min_block;
}

// IORING_REGISTER_CLONE_BUFFERS and its argument (6.12), which liburing
// 2.3's <liburing/io_uring.h> predates. 6.12 had `__u32 pad[6]` after
// `flags`; 6.13 named the first three src_off, dst_off and nr, where 0 still
// means "from the start, all of them", so zeroes mean the same to both.
constexpr unsigned register_clone_buffers = 30;
struct clone_buffers_arg {
    std::uint32_t src_fd;
    std::uint32_t flags;
    std::uint32_t src_off;
    std::uint32_t dst_off;
    std::uint32_t nr;
    std::uint32_t pad[3];
};
static_assert(sizeof(clone_buffers_arg) == 32);

// Gives `dst` the fixed buffers of `src` (same process, so the same memlock
// account: the kernel refuses a clone between differently accounted rings with
// EINVAL). -errno on failure: EINVAL on a kernel without the call, ENXIO when
// `src` has no buffers, EBUSY when `dst` has some.
int clone_buffers(io_uring* dst, const io_uring* src) noexcept {
    clone_buffers_arg arg{};
    arg.src_fd = static_cast<std::uint32_t>(src->ring_fd);
    const long rc = syscall(SYS_io_uring_register, dst->ring_fd, register_clone_buffers, &arg, 1);
    return rc < 0 ? -errno : 0;
}

// CAP_IPC_LOCK in this thread's effective set. capget(2) through the raw
// syscall: libcap is not a dependency, and one bit is all we need.
bool has_cap_ipc_lock() noexcept {
    __user_cap_header_struct header{};
    header.version = _LINUX_CAPABILITY_VERSION_3;
    header.pid = 0;
    __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
    if (syscall(SYS_capget, &header, data) != 0) {
        return false;
    }
    return (data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective & CAP_TO_MASK(CAP_IPC_LOCK)) != 0;
}

}  // namespace

expected<io_memory> io_memory::create(std::size_t bytes) {
    if (bytes > std::numeric_limits<std::size_t>::max() - (min_block - 1)) {
        return unexpected{errno_code(ENOMEM)};
    }
    const std::size_t capacity = (bytes + min_block - 1) & ~(min_block - 1);
    if ((capacity >> page_shift) >= nil) {  // page indices are 32-bit
        return unexpected{errno_code(ENOMEM)};
    }
    // MAP_POPULATE faults every page in now, on the calling (already pinned)
    // thread: the memory lands on the executor's NUMA node, and registering
    // later pins pages that exist instead of faulting them in one by one.
    void* p = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
        return unexpected{errno_code(errno)};
    }
    return io_memory(static_cast<std::byte*>(p), capacity);
}

io_memory::io_memory(std::byte* base, std::size_t capacity) : _base(base), _capacity(capacity) {
    const auto n = static_cast<std::uint32_t>(capacity >> page_shift);
    _max_order = static_cast<unsigned>(std::bit_width(n)) - 1;
    _pages.assign(n, page_node{nil, nil, 0, interior});
    _free_heads.assign(_max_order + 1, nil);
    std::uint32_t page = 0;
    for (unsigned order = _max_order + 1; order-- > 0;) {
        if (n & (std::uint32_t{1} << order)) {
            push_free(page, order);
            page += std::uint32_t{1} << order;
        }
    }
}

io_memory::io_memory(io_memory&& other) noexcept
    : _base(std::exchange(other._base, nullptr)), _capacity(std::exchange(other._capacity, 0)),
      _in_use(std::exchange(other._in_use, 0)), _max_order(std::exchange(other._max_order, 0)),
      _pages(std::move(other._pages)), _free_heads(std::move(other._free_heads)), _rings(std::move(other._rings)),
      _charge(std::exchange(other._charge, 0)) {
    other._pages.clear();
    other._free_heads.clear();
    other._rings.clear();
}

io_memory& io_memory::operator=(io_memory&& other) noexcept {
    if (this != &other) {
        release();
        _base = std::exchange(other._base, nullptr);
        _capacity = std::exchange(other._capacity, 0);
        _in_use = std::exchange(other._in_use, 0);
        _max_order = std::exchange(other._max_order, 0);
        _pages = std::move(other._pages);
        _free_heads = std::move(other._free_heads);
        _rings = std::move(other._rings);
        _charge = std::exchange(other._charge, 0);
        other._pages.clear();
        other._free_heads.clear();
        other._rings.clear();
    }
    return *this;
}

io_memory::~io_memory() { release(); }

void io_memory::release() noexcept {
    // The rings are deliberately left alone (see the header): if one is still
    // alive, its registration keeps the pages pinned until it is destroyed,
    // which is a leak but never a use-after-free.
    if (_base != nullptr) {
        munmap(_base, _capacity);
    }
    _base = nullptr;
    _capacity = 0;
    _in_use = 0;
    _pages.clear();
    _free_heads.clear();
    _rings.clear();
    _charge = 0;
}

std::size_t io_memory::memlock_required(std::size_t rings) const noexcept {
    // The kernel accounts whole pages of its own size (io_buffer_account_pin),
    // and a transparent huge page as all of its base pages, which comes to the
    // same total because a THP never extends past the mapping.
    const std::size_t page = kernel_page_size();
    const std::size_t per_ring = (_capacity + page - 1) / page * page;
    if (rings != 0 && per_ring > std::numeric_limits<std::size_t>::max() / rings) {
        return std::numeric_limits<std::size_t>::max();
    }
    return per_ring * rings;
}

bool io_memory::memlock_allows(std::size_t rings) const {
    if (has_cap_ipc_lock()) {
        return true;
    }
    auto limit = raise_memlock_limit();
    return limit.has_value() && *limit >= memlock_required(rings);
}

std::error_code io_memory::register_with(std::span<io_uring* const> rings) {
    if (registered()) {
        return errno_code(EBUSY);
    }
    if (rings.empty() || _base == nullptr) {
        return errno_code(EINVAL);
    }
    _rings.reserve(rings.size());  // no allocation failure between two kernel calls
    const iovec iov{_base, _capacity};
    const std::size_t per_ring = memlock_required(1);
    _charge = per_ring;
    if (int rc = io_uring_register_buffers(rings[0], &iov, 1); rc < 0) {
        // For the caller's message: would the other rings have shared this
        // registration? rings[0] has no buffers (else EBUSY), so a clone from
        // it changes nothing and only tells whether the kernel knows the call.
        if (rc != -EBUSY && rings.size() > 1 && clone_buffers(rings[1], rings[0]) == -EINVAL) {
            _charge = memlock_required(rings.size());
        }
        return errno_code(rc);
    }
    _rings.push_back(rings[0]);
    for (io_uring* ring : rings.subspan(1)) {
        int rc = clone_buffers(ring, rings[0]);
        if (rc == -EINVAL) {
            // Before 6.12: a registration of its own, charged again.
            _charge += per_ring;
            rc = io_uring_register_buffers(ring, &iov, 1);
        }
        if (rc < 0) {
            // All or nothing: a buf_index of 0 must be valid on every ring a
            // buffer may be submitted to, or not be handed out at all.
            unregister();
            return errno_code(rc);
        }
        _rings.push_back(ring);
    }
    return {};
}

void io_memory::unregister() noexcept {
    for (io_uring* ring : _rings) {
        io_uring_unregister_buffers(ring);
    }
    _rings.clear();
}

void io_memory::push_free(std::uint32_t page, unsigned order) noexcept {
    page_node& node = _pages[page];
    node.order = static_cast<std::uint8_t>(order);
    node.state = free_head;
    node.prev = nil;
    node.next = _free_heads[order];
    if (node.next != nil) {
        _pages[node.next].prev = page;
    }
    _free_heads[order] = page;
}

void io_memory::unlink_free(std::uint32_t page) noexcept {
    page_node& node = _pages[page];
    if (node.prev != nil) {
        _pages[node.prev].next = node.next;
    } else {
        _free_heads[node.order] = node.next;
    }
    if (node.next != nil) {
        _pages[node.next].prev = node.prev;
    }
    node.next = node.prev = nil;
    node.state = interior;
}

std::optional<io_buffer> io_memory::allocate(std::size_t bytes) {
    if (bytes == 0 || bytes > _capacity) {
        return std::nullopt;
    }
    const std::size_t pages = (bytes + min_block - 1) >> page_shift;
    const auto want = static_cast<unsigned>(std::bit_width(pages - 1));
    if (want > _max_order) {
        return std::nullopt;
    }
    unsigned order = want;
    while (order <= _max_order && _free_heads[order] == nil) {
        ++order;
    }
    if (order > _max_order) {
        return std::nullopt;
    }
    const std::uint32_t page = _free_heads[order];
    unlink_free(page);
    // Split down, keeping the lower half and freeing the upper one each time.
    while (order > want) {
        --order;
        push_free(page + (std::uint32_t{1} << order), order);
    }
    _pages[page].order = static_cast<std::uint8_t>(want);
    _pages[page].state = used_head;
    const std::size_t size = min_block << want;
    _in_use += size;
    return io_buffer{_base + (std::size_t{page} << page_shift), size, registered() ? 0 : -1};
}

bool io_memory::free(const io_buffer& b) noexcept {
    // Compared as integers: the pointer may come from anywhere.
    const auto addr = reinterpret_cast<std::uintptr_t>(b.data);
    const auto base = reinterpret_cast<std::uintptr_t>(_base);
    if (_base == nullptr || addr < base || addr - base >= _capacity) {
        return false;
    }
    const std::size_t offset = addr - base;
    if (offset % min_block != 0) {
        return false;
    }
    auto page = static_cast<std::uint32_t>(offset >> page_shift);
    if (_pages[page].state != used_head) {
        return false;
    }
    unsigned order = _pages[page].order;
    _in_use -= min_block << order;
    _pages[page].state = interior;
    const std::uint64_t n = _pages.size();
    while (order < _max_order) {
        const std::uint32_t size = std::uint32_t{1} << order;
        const std::uint32_t buddy = page ^ size;
        const std::uint32_t merged = page & ~size;
        if (std::uint64_t{merged} + 2 * std::uint64_t{size} > n) {
            break;  // the merged block would stick out of the arena
        }
        const page_node& b_node = _pages[buddy];
        if (b_node.state != free_head || b_node.order != order) {
            break;
        }
        unlink_free(buddy);
        page = merged;
        ++order;
    }
    push_free(page, order);
    return true;
}

std::string memlock_kib(std::size_t bytes) {
    if (bytes == std::numeric_limits<std::size_t>::max()) {
        return "unlimited";
    }
    return std::to_string(bytes / 1024 + (bytes % 1024 != 0)) + " KiB";
}

expected<std::size_t> raise_memlock_limit() {
    rlimit lim{};
    if (getrlimit(RLIMIT_MEMLOCK, &lim) != 0) {
        return unexpected{errno_code(errno)};
    }
    // Raising the soft limit up to the hard one needs no privilege. Docker's
    // default is 64 KiB soft and hard, so this often changes nothing, and the
    // caller's warning has to say which limit to raise.
    if (lim.rlim_cur != lim.rlim_max) {
        rlimit raised{lim.rlim_max, lim.rlim_max};
        if (setrlimit(RLIMIT_MEMLOCK, &raised) != 0) {
            return unexpected{errno_code(errno)};
        }
        lim = raised;
    }
    if (lim.rlim_cur == RLIM_INFINITY || lim.rlim_cur > std::numeric_limits<std::size_t>::max()) {
        return std::numeric_limits<std::size_t>::max();
    }
    return static_cast<std::size_t>(lim.rlim_cur);
}

}  // namespace shardd

// io_memory: the buddy allocator over the arena, and registering the arena
// with real io_uring rings (fixed I/O, rollback, running without memlock).
#include "reactor/io_memory.hh"

#include <algorithm>
#include <array>
#include <bit>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <grp.h>
#include <iterator>
#include <liburing.h>
#include <map>
#include <random>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

using namespace shardd;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

io_memory make_arena(std::size_t bytes) {
    auto mem = io_memory::create(bytes);
    REQUIRE(mem.has_value());
    return std::move(*mem);
}

std::uintptr_t addr(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

bool is_errno(std::error_code ec, int err) { return ec == std::error_code(err, std::system_category()); }

bool is_memlock_error(std::error_code ec) { return is_errno(ec, ENOMEM) || is_errno(ec, EPERM); }

// True, with a warning, when `ec` is the memlock refusal an unprivileged run
// may legitimately get: the rest of the test is then not testable here.
bool refused_by_memlock(std::error_code ec, const char* what) {
    if (is_memlock_error(ec)) {
        WARN(what << ": " << ec.message() << ": not testable under this memlock limit");
        return true;
    }
    return false;
}

// Live blocks by start address. A new block is checked against its two
// neighbours, which is enough to catch any overlap.
using block_map = std::map<std::uintptr_t, io_buffer>;

bool insert_disjoint(block_map& live, const io_buffer& b) {
    const auto start = addr(b.data);
    auto next = live.lower_bound(start);
    if (next != live.end() && next->first < start + b.size) {
        return false;
    }
    if (next != live.begin() && std::prev(next)->first + std::prev(next)->second.size > start) {
        return false;
    }
    live.emplace(start, b);
    return true;
}

bool well_formed(const io_memory& mem, const io_buffer& b, std::size_t requested) {
    const auto start = addr(b.data);
    return start % 4096 == 0 && start >= addr(mem.base()) && start + b.size <= addr(mem.base()) + mem.capacity() &&
           b.size >= requested && b.size >= 4096 && std::has_single_bit(b.size);
}

struct ring_guard {
    io_uring ring{};
    int rc;
    explicit ring_guard(unsigned entries = 8) : rc(io_uring_queue_init(entries, &ring, 0)) {}
    ~ring_guard() {
        if (rc == 0) {
            io_uring_queue_exit(&ring);
        }
    }
    ring_guard(const ring_guard&) = delete;
    ring_guard& operator=(const ring_guard&) = delete;
};

// False, with a warning, when the ring could not be created for lack of
// memlock (6.14+ charges the rings themselves); any other failure fails.
bool ring_ready(const ring_guard& r) {
    if (refused_by_memlock(errno_code(r.rc), "io_uring_queue_init")) {
        return false;
    }
    REQUIRE(r.rc == 0);
    return true;
}

// Submits what is queued and returns the result of the one completion.
int complete_one(io_uring* ring) {
    REQUIRE(io_uring_submit_and_wait(ring, 1) == 1);
    io_uring_cqe* cqe = nullptr;
    REQUIRE(io_uring_wait_cqe(ring, &cqe) == 0);
    const int res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    return res;
}

}  // namespace

TEST_CASE("create rounds the arena up to whole pages", "[io_memory]") {
    CHECK(make_arena(1).capacity() == 4096);
    CHECK(make_arena(4096).capacity() == 4096);
    CHECK(make_arena(5 * MiB + 1).capacity() == 5 * MiB + 4096);
    auto zero = io_memory::create(0);
    REQUIRE_FALSE(zero.has_value());
    CHECK(is_errno(zero.error(), EINVAL));
}

TEST_CASE("blocks are 4096-aligned, inside the arena and disjoint", "[io_memory]") {
    auto mem = make_arena(1 * MiB);
    const std::array<std::size_t, 9> sizes{1, 4096, 4097, 10000, 65536, 100, 8192, 131072, 3};
    std::vector<io_buffer> blocks;
    block_map live;
    std::size_t expected_in_use = 0;
    for (std::size_t s : sizes) {
        auto b = mem.allocate(s);
        REQUIRE(b.has_value());
        CHECK(well_formed(mem, *b, s));
        CHECK(b->buf_index == -1);
        REQUIRE(insert_disjoint(live, *b));
        expected_in_use += b->size;
        blocks.push_back(*b);
    }
    CHECK(mem.bytes_in_use() == expected_in_use);
    // Disjoint in fact, not only by address arithmetic: fill each block with
    // its own byte, then read every byte back.
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        std::memset(blocks[i].data, static_cast<int>(i + 1), blocks[i].size);
    }
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        const auto* p = blocks[i].data;
        CHECK(std::all_of(p, p + blocks[i].size, [&](std::byte c) { return c == std::byte(i + 1); }));
    }
    for (const auto& b : blocks) {
        CHECK(mem.free(b));
    }
    CHECK(mem.bytes_in_use() == 0);
}

TEST_CASE("exhaustion returns nullopt, a free makes room again", "[io_memory]") {
    auto mem = make_arena(64 * KiB);
    std::vector<io_buffer> pages;
    while (auto b = mem.allocate(4096)) {
        pages.push_back(*b);
    }
    REQUIRE(pages.size() == 16);
    CHECK(mem.bytes_in_use() == mem.capacity());
    CHECK_FALSE(mem.allocate(1).has_value());
    REQUIRE(mem.free(pages[7]));
    auto again = mem.allocate(4096);
    REQUIRE(again.has_value());
    CHECK(again->data == pages[7].data);
    CHECK_FALSE(mem.allocate(1).has_value());
}

TEST_CASE("freed buddies coalesce back into the whole arena", "[io_memory]") {
    auto mem = make_arena(1 * MiB);
    std::vector<io_buffer> pages;
    while (auto b = mem.allocate(4096)) {
        pages.push_back(*b);
    }
    REQUIRE(pages.size() == 256);
    CHECK_FALSE(mem.allocate(mem.capacity()).has_value());
    // Free the even pages first, then the odd ones: no buddy pair is complete
    // until the second pass, so every level of merging is exercised.
    for (std::size_t i = 0; i < pages.size(); i += 2) {
        REQUIRE(mem.free(pages[i]));
    }
    CHECK_FALSE(mem.allocate(8192).has_value());
    for (std::size_t i = 1; i < pages.size(); i += 2) {
        REQUIRE(mem.free(pages[i]));
    }
    CHECK(mem.bytes_in_use() == 0);
    auto whole = mem.allocate(mem.capacity());
    REQUIRE(whole.has_value());
    CHECK(whole->data == mem.base());
    CHECK(whole->size == mem.capacity());
}

TEST_CASE("a capacity that is not a power of two is split into aligned blocks", "[io_memory]") {
    auto mem = make_arena(5 * MiB + 4096);
    for (int round = 0; round < 2; ++round) {
        CHECK_FALSE(mem.allocate(mem.capacity()).has_value());
        auto big = mem.allocate(4 * MiB);
        auto mid = mem.allocate(1 * MiB);
        auto small = mem.allocate(4096);
        REQUIRE(big.has_value());
        REQUIRE(mid.has_value());
        REQUIRE(small.has_value());
        CHECK(big->data == mem.base());
        CHECK(mid->data == mem.base() + 4 * MiB);
        CHECK(small->data == mem.base() + 5 * MiB);
        CHECK_FALSE(mem.allocate(1).has_value());
        CHECK(mem.free(*small));
        CHECK(mem.free(*big));
        CHECK(mem.free(*mid));
        CHECK(mem.bytes_in_use() == 0);
    }
}

TEST_CASE("bad requests and bad frees are refused without side effects", "[io_memory]") {
    auto mem = make_arena(64 * KiB);
    CHECK_FALSE(mem.allocate(0).has_value());
    CHECK_FALSE(mem.allocate(mem.capacity() + 1).has_value());
    auto b = mem.allocate(16 * KiB);
    REQUIRE(b.has_value());
    const std::size_t in_use = mem.bytes_in_use();
    CHECK_FALSE(mem.free(io_buffer{b->data + 4096, 4096, -1}));  // inside the block
    CHECK_FALSE(mem.free(io_buffer{b->data + 1, 4096, -1}));     // misaligned
    std::array<std::byte, 16> elsewhere{};
    CHECK_FALSE(mem.free(io_buffer{elsewhere.data(), elsewhere.size(), -1}));
    CHECK_FALSE(mem.free(io_buffer{}));
    CHECK(mem.bytes_in_use() == in_use);
    CHECK(mem.free(*b));
    CHECK_FALSE(mem.free(*b));  // double free
    CHECK(mem.bytes_in_use() == 0);
}

TEST_CASE("randomized alloc/free keeps blocks disjoint and accounted", "[io_memory]") {
    auto mem = make_arena(4 * MiB);
    std::mt19937 rng(20240611);
    std::uniform_int_distribution<int> order(0, 6);
    std::uniform_int_distribution<int> coin(0, 99);
    block_map live;
    std::vector<io_buffer> order_of_birth;  // random picks by index
    std::size_t expected_in_use = 0;
    std::size_t failures = 0;
    for (int op = 0; op < 100000; ++op) {
        if (order_of_birth.empty() || coin(rng) < 55) {
            const std::size_t limit = std::size_t{4096} << order(rng);
            const std::size_t want = std::uniform_int_distribution<std::size_t>(1, limit)(rng);
            auto b = mem.allocate(want);
            if (!b) {
                ++failures;
                continue;
            }
            if (!well_formed(mem, *b, want) || !insert_disjoint(live, *b)) {
                FAIL("bad or overlapping block at op " << op);
            }
            order_of_birth.push_back(*b);
            expected_in_use += b->size;
        } else {
            const auto i = std::uniform_int_distribution<std::size_t>(0, order_of_birth.size() - 1)(rng);
            const io_buffer b = order_of_birth[i];
            order_of_birth[i] = order_of_birth.back();
            order_of_birth.pop_back();
            live.erase(addr(b.data));
            if (!mem.free(b)) {
                FAIL("free refused a live block at op " << op);
            }
            expected_in_use -= b.size;
        }
        if (mem.bytes_in_use() != expected_in_use) {
            FAIL("bytes_in_use " << mem.bytes_in_use() << " != " << expected_in_use << " at op " << op);
        }
    }
    INFO("allocations refused for lack of space: " << failures);
    for (const auto& b : order_of_birth) {
        REQUIRE(mem.free(b));
    }
    CHECK(mem.bytes_in_use() == 0);
    CHECK(mem.allocate(mem.capacity()).has_value());
}

TEST_CASE("moving an arena moves its blocks and empties the source", "[io_memory]") {
    auto a = make_arena(64 * KiB);
    auto b = a.allocate(4096);
    REQUIRE(b.has_value());
    io_memory moved(std::move(a));
    CHECK(a.capacity() == 0);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
    CHECK_FALSE(a.allocate(1).has_value());
    CHECK_FALSE(a.free(*b));
    CHECK(moved.capacity() == 64 * KiB);
    CHECK(moved.bytes_in_use() == 4096);
    auto other = make_arena(8 * KiB);
    other = std::move(moved);
    CHECK(other.free(*b));
    CHECK(other.bytes_in_use() == 0);
}

TEST_CASE("memlock_required covers the arena once per ring", "[io_memory]") {
    auto mem = make_arena(1 * MiB + 1);
    CHECK(mem.memlock_required() >= mem.capacity());
    CHECK(mem.memlock_required(2) == 2 * mem.memlock_required(1));
    CHECK(mem.memlock_required(0) == 0);
    // memlock_allows: the "yes" side here; the "no" side is the fork test.
    auto limit = raise_memlock_limit();
    REQUIRE(limit.has_value());
    CHECK(mem.memlock_allows(0));
    if (*limit >= mem.memlock_required(2)) {
        CHECK(mem.memlock_allows(2));
    }
}

TEST_CASE("raise_memlock_limit never lowers the soft limit", "[io_memory]") {
    rlimit before{};
    REQUIRE(getrlimit(RLIMIT_MEMLOCK, &before) == 0);
    const std::size_t before_bytes = before.rlim_cur == RLIM_INFINITY ? SIZE_MAX : before.rlim_cur;
    auto raised = raise_memlock_limit();
    REQUIRE(raised.has_value());
    CHECK(*raised >= before_bytes);
    rlimit after{};
    REQUIRE(getrlimit(RLIMIT_MEMLOCK, &after) == 0);
    CHECK(after.rlim_cur == after.rlim_max);
}

TEST_CASE("a registered arena does fixed writes and reads to a file", "[io_memory]") {
    // Small enough for Docker's default 64 KiB memlock, so even a root
    // without CAP_IPC_LOCK in a container exercises real fixed I/O.
    auto mem = make_arena(32 * KiB);
    ring_guard r;
    if (!ring_ready(r)) {
        return;
    }
    io_uring* rings[] = {&r.ring};
    if (auto ec = mem.register_with(rings)) {
        // Not root and not enough memlock: the documented degraded mode.
        REQUIRE(refused_by_memlock(ec, "register_with"));
        CHECK_FALSE(mem.registered());
        CHECK(mem.allocate(4096).value_or(io_buffer{nullptr, 0, -2}).buf_index == -1);
        return;
    }
    REQUIRE(mem.registered());
    auto src = mem.allocate(8192);
    auto dst = mem.allocate(8192);
    REQUIRE(src.has_value());
    REQUIRE(dst.has_value());
    CHECK(src->buf_index == 0);
    CHECK(dst->buf_index == 0);
    for (std::size_t i = 0; i < src->size; ++i) {
        src->data[i] = static_cast<std::byte>(i * 31 + 7);
    }
    std::memset(dst->data, 0, dst->size);

    char path[] = "/tmp/shardd-io_memory-XXXXXX";
    const int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    unlink(path);  // the open descriptor keeps the file until close

    io_uring_prep_write_fixed(io_uring_get_sqe(&r.ring), fd, src->data, 8192, 0, src->buf_index);
    CHECK(complete_one(&r.ring) == 8192);
    io_uring_prep_read_fixed(io_uring_get_sqe(&r.ring), fd, dst->data, 8192, 0, dst->buf_index);
    CHECK(complete_one(&r.ring) == 8192);
    CHECK(std::memcmp(src->data, dst->data, 8192) == 0);
    // Any address inside the iovec works with index 0, not only block starts.
    io_uring_prep_read_fixed(io_uring_get_sqe(&r.ring), fd, dst->data + 100, 50, 4000, 0);
    CHECK(complete_one(&r.ring) == 50);
    CHECK(std::memcmp(dst->data + 100, src->data + 4000, 50) == 0);
    close(fd);
    mem.unregister();
    CHECK_FALSE(mem.registered());
}

TEST_CASE("registering on two rings is all or nothing", "[io_memory]") {
    // 4 + 16 + 16 KiB at most are charged at once: within a 64 KiB memlock.
    auto mem = make_arena(16 * KiB);
    auto other = make_arena(4096);
    ring_guard a, b, c;
    if (!ring_ready(a) || !ring_ready(b) || !ring_ready(c)) {
        return;
    }
    io_uring* only_b[] = {&b.ring};
    if (auto ec = other.register_with(only_b)) {
        REQUIRE(refused_by_memlock(ec, "register 4 KiB"));
        return;
    }
    // Ring b already has a buffer table: the kernel answers EBUSY there, after
    // the arena was registered on ring a, which must then be undone.
    io_uring* a_then_b[] = {&a.ring, &b.ring};
    auto ec = mem.register_with(a_then_b);
    if (refused_by_memlock(ec, "register 16 KiB")) {
        return;
    }
    CHECK(is_errno(ec, EBUSY));
    CHECK_FALSE(mem.registered());
    CHECK(mem.allocate(4096).value_or(io_buffer{nullptr, 0, -2}).buf_index == -1);
    // Ring a is clean again (else EBUSY), and two rings at once work.
    io_uring* a_and_c[] = {&a.ring, &c.ring};
    ec = mem.register_with(a_and_c);
    if (refused_by_memlock(ec, "register 16 KiB twice")) {
        return;
    }
    REQUIRE_FALSE(ec);
    CHECK(mem.registered());
    CHECK(mem.allocate(4096).value_or(io_buffer{nullptr, 0, -2}).buf_index == 0);
    CHECK(is_errno(mem.register_with(a_and_c), EBUSY));  // already registered
    CHECK(is_errno(mem.register_with({}), EBUSY));
    mem.unregister();
    CHECK(is_errno(mem.register_with({}), EINVAL));
}

namespace {

// Exit codes of the child in the memlock test; 30 + n: check n failed.
constexpr int child_ok = 0;  // registration refused, arena usable unregistered
constexpr int child_registered = 20;
constexpr int child_no_ring = 21;

// Runs in the forked child: no Catch2 here, results go out as the exit code.
int register_without_memlock() {
    // Root is exempt through CAP_IPC_LOCK. Becoming nobody clears the
    // permitted and effective capability sets (capabilities(7)), and the ring
    // is created after that, which is when the kernel looks.
    if (geteuid() == 0 && (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0)) {
        return 31;
    }
    auto mem = io_memory::create(64 * KiB);
    if (!mem) {
        return 32;
    }
    // The ring first, under the inherited limit: since 6.14 the SQ/CQ rings
    // are memlock-charged regions again, so under a zero limit not even the
    // ring could be created. Lowering a limit needs no privilege.
    ring_guard r;
    if (r.rc != 0) {
        return child_no_ring;
    }
    const rlimit zero{0, 0};
    if (setrlimit(RLIMIT_MEMLOCK, &zero) != 0) {
        return 33;
    }
    io_uring* rings[] = {&r.ring};
    const auto ec = mem->register_with(rings);
    if (!ec) {
        return child_registered;
    }
    if (!is_memlock_error(ec) || mem->registered() || mem->memlock_allows(1)) {
        return 34;
    }
    auto b = mem->allocate(4096);
    if (!b || b->buf_index != -1) {
        return 35;
    }
    std::memset(b->data, 0xab, b->size);
    return mem->free(*b) && mem->bytes_in_use() == 0 ? child_ok : 36;
}

}  // namespace

TEST_CASE("without memlock the arena runs unregistered", "[io_memory]") {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        _exit(register_without_memlock());
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    const int code = WEXITSTATUS(status);
    if (code == child_registered) {
        WARN("this kernel registered buffers under RLIMIT_MEMLOCK 0 without CAP_IPC_LOCK: no memlock charge");
    } else if (code == child_no_ring) {
        WARN("no io_uring ring for an unprivileged user here: failure path not exercised");
    } else {
        INFO("child exit code " << code);
        CHECK(code == child_ok);
    }
}

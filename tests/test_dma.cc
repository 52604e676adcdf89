// O_DIRECT file I/O through the poll ring, falling back to the main ring
// where the device cannot poll.
#include "reactor/executor.hh"
#include "reactor/io.hh"

#include "tests/support/executor.hh"

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <unistd.h>

using namespace shardd;

TEST_CASE("O_DIRECT writes and reads round-trip through the poll ring or its fallback", "[dma]") {
    // /var/tmp, not /tmp: /tmp may be tmpfs, which has no O_DIRECT.
    std::string path =
        (std::filesystem::exists("/var/tmp") ? std::string("/var/tmp") : std::string("/tmp")) + "/shardd-dma-XXXXXX";
    int fd = mkstemp(path.data());
    REQUIRE(fd >= 0);
    ::close(fd);
    fd = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    unlink(path.c_str());
    if (fd < 0 && errno == EINVAL) {
        WARN("the filesystem of " << path << " has no O_DIRECT; nothing to test");
        return;
    }
    REQUIRE(fd >= 0);
    constexpr std::size_t block = 4096;
    constexpr std::size_t size = 16 * block;
    auto* out = static_cast<std::byte*>(std::aligned_alloc(block, size));
    auto* in = static_cast<std::byte*>(std::aligned_alloc(block, size));
    for (std::size_t i = 0; i < size; ++i) {
        out[i] = static_cast<std::byte>(i * 7 + 1);
    }
    std::memset(in, 0, size);
    auto ex = test::make_executor();
    auto ok = ex->run([](int fd, std::byte* out, std::byte* in) -> task<bool> {
        auto w = co_await write_dma(fd, out, size, 0);
        if (!w || *w != size) {
            co_return false;
        }
        // Read it back in two halves at aligned offsets.
        auto r1 = co_await read_dma(fd, in, size / 2, 0);
        auto r2 = co_await read_dma(fd, in + size / 2, size / 2, size / 2);
        co_return r1&& r2&&* r1 == size / 2 && *r2 == size / 2;
    }(fd, out, in));
    CHECK(ok);
    CHECK(std::memcmp(out, in, size) == 0);
    // Each operation fell back at most once. (ext4 on virtio-blk without
    // poll queues: an allocating write completes inline, reads fall back.)
    const auto fallbacks = ex->poll_fallbacks();
    INFO("poll ring fallbacks: " << fallbacks);
    CHECK(fallbacks <= 3);
    CHECK(ex->poll_ring().in_flight() == 0);
    std::free(out);
    std::free(in);
    ::close(fd);
}

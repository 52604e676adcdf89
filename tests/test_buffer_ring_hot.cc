// Hot buffers (reactor/buffer_ring.hh): the kernel's ring holds only a
// target number of the pool's buffers, the rest wait on a stack with the
// last released on top. So a stream reuses a small working set instead of
// cycling through the whole pool (cold memory, issue 13), and a burst bigger
// than the target still gets every buffer of the pool.
//
// Kernel: multishot recv and provided buffer rings, Linux 6.0+.

#include "reactor/net.hh"

#include "tests/support/executor.hh"
#include "tests/support/socket_pair.hh"

#include <catch2/catch.hpp>
#include <fcntl.h>
#include <set>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd;
using shardd::test::make_executor;
using shardd::test::socket_pair;

TEST_CASE("a ping-pong stream cycles through the ring's target, not the whole pool", "[buffer_ring][hot]") {
    auto ex = make_executor();
    constexpr unsigned pool = 1024;
    constexpr unsigned rounds = 5000;
    auto br = buffer_ring::create(ex->main_ring(), 7, pool, 1024);
    REQUIRE(br.has_value());
    const unsigned target = (*br)->ring_target();
    REQUIRE(target < pool);
    socket_pair sp;

    auto used = ex->run([](int fd, int peer, buffer_ring& br) -> task<std::set<std::uint16_t>> {
        std::set<std::uint16_t> bids;
        recv_stream in(fd, br);
        for (unsigned i = 0; i < rounds; ++i) {
            const char byte = static_cast<char>(i);
            REQUIRE(::send(peer, &byte, 1, MSG_NOSIGNAL) == 1);
            auto chunk = co_await in.next();
            const bool ok = chunk.has_value() && chunk->data.size() == 1 && chunk->data[0] == std::byte(byte);
            REQUIRE(ok);
            bids.insert(chunk->buffer_id);
            br.release(chunk->buffer_id);
        }
        co_await in.stop();
        co_return bids;
    }(sp.fd[0], sp.fd[1], **br));
    INFO("distinct buffers used over " << rounds << " messages: " << used.size() << " of " << pool);
    // The ring's target, plus the one the reader holds while the ring is
    // topped up behind it. FIFO over the whole pool would use all 1024.
    CHECK(used.size() <= target + 1);
    CHECK((*br)->exhausted() == 0);
}

TEST_CASE("a burst bigger than the ring's target gets every buffer of the pool, byte-exact", "[buffer_ring][hot]") {
    auto ex = make_executor();
    constexpr unsigned pool = 512;
    constexpr std::size_t size = 1024;
    auto br = buffer_ring::create(ex->main_ring(), 8, pool, size);
    REQUIRE(br.has_value());
    const unsigned target = (*br)->ring_target();
    socket_pair sp;
    // More than the target's worth of buffers, less than the pool's: the
    // reader holds every buffer it gets until the end, so the ring must grow
    // past its target for the reader to see it all.
    std::vector<std::byte> data(size * (target * 3));
    for (std::size_t i = 0; i < data.size(); ++i) {
        data[i] = static_cast<std::byte>((i * 131 + i / 251) & 0xff);
    }
    REQUIRE(data.size() < pool * size);
    int sndbuf = static_cast<int>(data.size() * 2);
    setsockopt(sp.fd[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    REQUIRE(fcntl(sp.fd[1], F_SETFL, O_NONBLOCK) == 0);

    struct outcome {
        std::vector<std::byte> got;
        unsigned held = 0;
    };
    auto out = ex->run([](int fd, int peer, buffer_ring& br, const std::vector<std::byte>& data) -> task<outcome> {
        outcome o;
        std::vector<std::uint16_t> held;
        recv_stream in(fd, br);
        std::size_t sent = 0;
        while (o.got.size() < data.size()) {
            if (sent < data.size()) {
                const ssize_t n = ::send(peer, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
                if (n > 0) {
                    sent += static_cast<std::size_t>(n);
                }
            }
            auto chunk = co_await in.next();
            if (!chunk && chunk.error() == std::errc::no_buffer_space) {
                // The ring ran dry while spares were left: it grew; re-arm.
                auto wait = in.wait_for_buffers();
                const bool got = co_await wait;
                REQUIRE(got);
                continue;
            }
            const bool ok = chunk.has_value() && !chunk->data.empty();
            REQUIRE(ok);
            o.got.insert(o.got.end(), chunk->data.begin(), chunk->data.end());
            held.push_back(chunk->buffer_id);
        }
        o.held = br.in_use();
        for (std::uint16_t bid : held) {
            br.release(bid);
        }
        co_await in.stop();
        co_return o;
    }(sp.fd[0], sp.fd[1], **br, data));
    CHECK(out.got == data);
    INFO("ring target " << target << " -> " << (*br)->ring_target() << ", -ENOBUFS " << (*br)->exhausted());
    CHECK(out.held > target);
    if (!ex->uses_epoll()) {
        // The kernel takes buffers faster than the loop refills them. The
        // epoll backend takes at most a batch per turn (epoll_engine.cc's
        // recv_batch) and the loop refills between turns: the ring need not
        // grow there.
        CHECK((*br)->ring_target() > target);
    }
    CHECK((*br)->in_use() == 0);
}

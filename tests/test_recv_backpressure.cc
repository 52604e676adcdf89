// Backpressure on a multishot receive (reactor/net.hh): limit_unread() and
// pause() stop the kernel from filling more buffers, next() resumes, and no
// byte is lost or reordered across pauses. buffer_ring::available() wakes a
// receiver starved by -ENOBUFS once others hand buffers back.
//
// Kernel: multishot recv and provided buffer rings, Linux 6.0+.

#include "reactor/event.hh"
#include "reactor/net.hh"

#include "tests/support/executor.hh"
#include "tests/support/socket_pair.hh"

#include <catch2/catch.hpp>
#include <chrono>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd;
using shardd::test::make_executor;
using shardd::test::socket_pair;

namespace {

using clock = std::chrono::steady_clock;

std::vector<std::byte> pattern(std::size_t n) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        v[i] = static_cast<std::byte>((i * 131 + i / 251) & 0xff);
    }
    return v;
}

// Fills the socket pair's buffers without blocking; returns what was written.
std::size_t fill(int fd, const std::vector<std::byte>& data) {
    REQUIRE(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
    std::size_t off = 0;
    while (off < data.size()) {
        const ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
        if (n <= 0) {
            break;
        }
        off += static_cast<std::size_t>(n);
    }
    return off;
}

}  // namespace

TEST_CASE("limit_unread stops a receive at the limit; next() resumes it with nothing lost", "[net][backpressure]") {
    // With the kernel's multishot byte limit (6.x) and without it (forced:
    // the stream pauses itself once over the limit, as on older kernels).
    const bool kernel_limit = GENERATE(true, false);
    INFO("kernel byte limit asked for: " << kernel_limit);
    recv_stream::use_multishot_limit(kernel_limit);
    struct restore {
        ~restore() { recv_stream::use_multishot_limit(true); }
    } restore_after;
    auto ex = make_executor();
    constexpr std::size_t buffer_size = 1024;
    constexpr std::size_t limit = 4096;
    auto br = buffer_ring::create(ex->main_ring(), 5, 256, buffer_size);
    REQUIRE(br.has_value());
    socket_pair sp;
    const auto data = pattern(1 << 20);
    const std::size_t written = fill(sp.fd[1], data);
    REQUIRE(written > 64 * buffer_size);  // enough to overrun the limit many times

    struct outcome {
        std::vector<std::byte> got;
        unsigned in_use_at_stop = 0;
        unsigned in_use_later = 0;
        std::uint64_t pauses = 0;
    };
    auto out = ex->run([](int fd, buffer_ring& br, std::size_t want) -> task<outcome> {
        outcome o;
        recv_stream in(fd, br);
        in.limit_unread(limit);
        auto first = co_await in.next();  // arms it
        bool ok = first.has_value() && !first->data.empty();
        REQUIRE(ok);
        o.got.insert(o.got.end(), first->data.begin(), first->data.end());
        br.release(first->buffer_id);
        // Nothing more is taken: the stream must stop by itself, at the
        // limit (the kernel's multishot byte limit) or by pausing (kernels
        // without it). Wait for it on the buffer count, bounded in time.
        const auto deadline = clock::now() + std::chrono::seconds(20);
        while (br.in_use() * buffer_size < limit - buffer_size && in.pauses() == 0 && clock::now() < deadline) {
            co_await yield();
        }
        co_await nop();
        o.in_use_at_stop = br.in_use();
        // Stopped means stopped: more loop iterations take no more buffers.
        for (int i = 0; i < 20; ++i) {
            co_await nop();
        }
        o.in_use_later = br.in_use();
        o.pauses = in.pauses();
        // Now read everything; every next() after a drained queue re-arms.
        in.limit_unread(std::numeric_limits<std::size_t>::max());
        while (o.got.size() < want) {
            auto chunk = co_await in.next();
            if (!chunk && chunk.error() == std::errc::no_buffer_space) {
                // The kernel's ring holds only its target of the pool
                // (buffer_ring.hh, "Hot buffers"): it grew; re-arm.
                auto wait = in.wait_for_buffers();
                ok = co_await wait;
                REQUIRE(ok);
                continue;
            }
            ok = chunk.has_value() && !chunk->data.empty();
            REQUIRE(ok);
            o.got.insert(o.got.end(), chunk->data.begin(), chunk->data.end());
            br.release(chunk->buffer_id);
        }
        co_return o;
    }(sp.fd[0], **br, written));
    INFO("buffers held when stopped: " << out.in_use_at_stop << " of " << written / buffer_size << "; pauses "
                                       << out.pauses);
    if (kernel_limit && out.pauses == 0) {
        // The kernel enforced the limit: at most one buffer beyond it.
        CHECK(out.in_use_at_stop * buffer_size <= limit + buffer_size);
    } else {
        // Without it the stream cancels itself once over the limit, and the
        // cancel lands after what the kernel moved in that io_uring_enter;
        // or the ring runs dry first (ENOBUFS ends the multishot). Either
        // way it stops within what the kernel's ring held: its starting
        // target of 64 buffers (buffer_ring.hh, "Hot buffers").
        CHECK(out.in_use_at_stop <= 64);
    }
    CHECK(out.in_use_later == out.in_use_at_stop);
    REQUIRE(out.got.size() == written);
    CHECK(std::equal(out.got.begin(), out.got.end(), data.begin()));
    CHECK((*br)->in_use() == 0);
}

TEST_CASE("pause() settles the receive; data that arrives later still comes, in order", "[net][backpressure]") {
    auto ex = make_executor();
    auto br = buffer_ring::create(ex->main_ring(), 6, 16, 512);
    REQUIRE(br.has_value());
    socket_pair sp;
    auto got = ex->run([](int fd, int peer, buffer_ring& br) -> task<std::string> {
        recv_stream in(fd, br);
        std::string s;
        for (int round = 0; round < 5; ++round) {
            // Pause (cancelling the armed receive, and waiting for the
            // kernel to let go), then write, then resume: the bytes arrive.
            co_await in.pause();
            REQUIRE(br.in_use() == 0);
            const std::string msg = "round " + std::to_string(round) + ";";
            REQUIRE(::send(peer, msg.data(), msg.size(), 0) == static_cast<ssize_t>(msg.size()));
            while (s.size() < (round + 1) * msg.size()) {
                auto chunk = co_await in.next();
                bool ok = chunk.has_value() && !chunk->data.empty();
                REQUIRE(ok);
                s.append(reinterpret_cast<const char*>(chunk->data.data()), chunk->data.size());
                br.release(chunk->buffer_id);
            }
        }
        co_return s;
    }(sp.fd[0], sp.fd[1], **br));
    CHECK(got == "round 0;round 1;round 2;round 3;round 4;");
}

TEST_CASE("available() wakes a receiver starved by ENOBUFS when buffers come back", "[net][buffers]") {
    auto ex = make_executor();
    // 8 buffers: 1/8 free is one buffer.
    auto br = buffer_ring::create(ex->main_ring(), 7, 8, 256);
    REQUIRE(br.has_value());
    socket_pair hog;
    socket_pair starved;
    REQUIRE(fill(hog.fd[1], pattern(8 * 256)) == 8 * 256);
    REQUIRE(::send(starved.fd[1], "xyz", 3, 0) == 3);
    auto got = ex->run([](int hog_fd, int starved_fd, buffer_ring& br) -> task<std::string> {
        // The hog takes every buffer and keeps them until told.
        std::vector<std::uint16_t> held;
        recv_stream hog(hog_fd, br);
        while (held.size() < 8) {
            auto chunk = co_await hog.next();
            bool ok = chunk.has_value() && !chunk->data.empty();
            REQUIRE(ok);
            held.push_back(chunk->buffer_id);
        }
        co_await hog.stop();
        event starved_waiting;
        auto reader = executor::current()->spawn([](int fd, buffer_ring& br, event& waiting) -> task<std::string> {
            recv_stream in(fd, br);
            for (;;) {
                auto chunk = co_await in.next();
                if (!chunk && chunk.error() == std::errc::no_buffer_space) {
                    waiting.set();
                    co_await br.available();
                    continue;
                }
                bool ok = chunk.has_value() && !chunk->data.empty();
                REQUIRE(ok);
                std::string s(reinterpret_cast<const char*>(chunk->data.data()), chunk->data.size());
                br.release(chunk->buffer_id);
                co_return s;
            }
        }(starved_fd, br, starved_waiting));
        co_await starved_waiting.wait();
        CHECK(br.free_buffers() == 0);
        for (auto bid : held) {
            br.release(bid);
        }
        co_return co_await reader;
    }(hog.fd[0], starved.fd[0], **br));
    CHECK(got == "xyz");
    CHECK((*br)->exhausted() >= 1);
    CHECK((*br)->in_use() == 0);
}

TEST_CASE("starved receives get buffers first come, first served, one per free buffer", "[net][buffers]") {
    auto ex = make_executor();
    auto br = buffer_ring::create(ex->main_ring(), 8, 4, 256);
    REQUIRE(br.has_value());
    socket_pair hog;
    REQUIRE(fill(hog.fd[1], pattern(4 * 256)) == 4 * 256);
    // Five starved connections, each with bytes waiting in its socket.
    std::vector<std::unique_ptr<socket_pair>> starved;
    for (int i = 0; i < 5; ++i) {
        starved.push_back(std::make_unique<socket_pair>());
        REQUIRE(::send(starved.back()->fd[1], "abc", 3, 0) == 3);
    }
    struct outcome {
        std::vector<int> order;     // who got its bytes, in order; -i: aborted
        std::size_t after_one = 0;  // how many had, one released buffer later
        std::size_t waiting_after_one = 0;
    };
    auto out = ex->run([](int hog_fd, buffer_ring& br, std::vector<int> fds) -> task<outcome> {
        outcome o;
        std::vector<std::uint16_t> held;
        recv_stream hog(hog_fd, br);
        while (held.size() < 4) {
            auto chunk = co_await hog.next();
            bool ok = chunk.has_value() && !chunk->data.empty();
            REQUIRE(ok);
            held.push_back(chunk->buffer_id);
        }
        co_await hog.stop();
        REQUIRE(br.free_buffers() == 0);
        abort_source abort_third;
        abort_source never;
        std::vector<join_handle<void>> readers;
        for (int i = 0; i < 5; ++i) {
            readers.push_back(executor::current()->spawn(
                [](int fd, buffer_ring& br, int i, std::vector<int>& order, abort_source& abort) -> task<void> {
                    recv_stream in(fd, br, &abort);
                    for (;;) {
                        auto chunk = co_await in.next();
                        if (chunk) {
                            REQUIRE(chunk->data.size() == 3);
                            order.push_back(i);
                            // Keep the buffer: the next waiter needs a new one.
                            co_return;
                        }
                        if (chunk.error() != std::errc::no_buffer_space || !co_await in.wait_for_buffers(&abort)) {
                            order.push_back(-i);
                            co_return;
                        }
                    }
                }(fds[i], br, i, o.order, i == 2 ? abort_third : never)));
            // One at a time, so the queue order is known.
            while (br.waiters() < static_cast<std::size_t>(i + 1)) {
                co_await nop();
            }
        }
        abort_third.request_abort();
        co_await yield();
        // One buffer back: the oldest waiter's receive gets it; nobody else
        // re-arms (they would only fail again).
        br.release(held[0]);
        for (int i = 0; i < 10; ++i) {
            co_await nop();
        }
        o.after_one = o.order.size();
        o.waiting_after_one = br.waiters();
        for (std::size_t i = 1; i < held.size(); ++i) {
            br.release(held[i]);
        }
        for (auto& r : readers) {
            co_await r;
        }
        co_return o;
    }(hog.fd[0], **br, [&] {
                           std::vector<int> fds;
                           for (auto& s : starved) {
                               fds.push_back(s->fd[0]);
                           }
                           return fds;
                       }()));
    // -2: the aborted reader, at once; then 0 alone for the first buffer;
    // then the rest in the order they came.
    CHECK(out.order == std::vector<int>{-2, 0, 1, 3, 4});
    CHECK(out.after_one == 2);
    CHECK(out.waiting_after_one == 3);
}

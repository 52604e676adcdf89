// Network primitives over real loopback sockets: listen with SO_REUSEPORT,
// multishot accept (bounded, and off the latency ring), multishot receive
// into a provided buffer ring (and its exhaustion), send_all, connect,
// half-close, close cancelling a receive, stop() settling one.
#include "reactor/net.hh"

#include "tests/support/executor.hh"

#include <catch2/catch.hpp>
#include <cstring>
#include <numeric>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd;
using shardd::test::make_executor;

namespace {

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        v[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
    }
    return v;
}

// Reads exactly n bytes with recv_some.
task<std::vector<std::byte>> read_exactly(int fd, std::size_t n) {
    std::vector<std::byte> out(n);
    std::size_t got = 0;
    while (got < n) {
        auto r = co_await recv_some(fd, out.data() + got, static_cast<std::uint32_t>(n - got));
        if (!r || *r == 0) {
            break;
        }
        got += *r;
    }
    out.resize(got);
    co_return out;
}

// Accepts one connection and echoes it with a recv_stream until EOF, then
// shuts down its write side. Returns the bytes echoed.
task<std::size_t> echo_one(int lfd, buffer_ring& br) {
    accept_stream incoming(lfd);
    auto accepted = co_await incoming.next();
    REQUIRE(accepted.has_value());
    owned_fd fd = std::move(*accepted);
    std::size_t total = 0;
    {
        recv_stream in(fd.get(), br);
        for (;;) {
            auto chunk = co_await in.next();
            if (!chunk && chunk.error() == std::errc::no_buffer_space) {
                continue;  // the ring ran dry while we were sending; re-arm
            }
            INFO((chunk ? std::string() : chunk.error().message()));
            REQUIRE(chunk.has_value());
            if (chunk->data.empty()) {
                break;
            }
            auto sent = co_await send_all(fd.get(), chunk->data);
            br.release(chunk->buffer_id);
            REQUIRE(sent.has_value());
            total += *sent;
        }
        co_await in.stop();
    }
    CHECK_FALSE(shutdown_socket(fd.get(), SHUT_WR));
    co_return total;
}

task<bool> client_round_trip(socket_address addr, std::vector<std::byte> data) {
    auto fd = tcp_socket(addr.family());
    REQUIRE(fd.has_value());
    auto ec = co_await connect(fd->get(), addr);
    REQUIRE_FALSE(ec);
    auto reader = executor::current()->spawn(read_exactly(fd->get(), data.size()));
    auto sent = co_await send_all(fd->get(), data);
    REQUIRE(sent.has_value());
    CHECK_FALSE(shutdown_socket(fd->get(), SHUT_WR));
    auto back = co_await reader;
    co_return back == data;
}

void echo_test(const char* address) {
    auto ex = make_executor();
    auto addr = socket_address::parse(address);
    REQUIRE(addr.has_value());
    auto lfd = listen_socket(*addr, {});
    REQUIRE(lfd.has_value());
    auto bound = local_address(lfd->get());
    REQUIRE(bound.has_value());
    CHECK(bound->port() != 0);
    auto br = buffer_ring::create(ex->main_ring(), 1, 64, 4096);
    REQUIRE(br.has_value());
    auto ok = ex->run([](int lfd, socket_address to, buffer_ring& br) -> task<bool> {
        auto server = executor::current()->spawn(echo_one(lfd, br));
        bool same = co_await client_round_trip(to, pattern(1 << 20, 7));
        std::size_t echoed = co_await server;
        co_return same&& echoed == (1u << 20);
    }(lfd->get(), *bound, **br));
    CHECK(ok);
    CHECK((*br)->in_use() == 0);
}

}  // namespace

TEST_CASE("1 MiB echoes byte-exact over IPv4", "[net]") { echo_test("127.0.0.1:0"); }

TEST_CASE("1 MiB echoes byte-exact over IPv6", "[net]") { echo_test("[::1]:0"); }

TEST_CASE("SO_REUSEPORT lets several sockets bind one port", "[net]") {
    auto a = listen_socket(*socket_address::parse("127.0.0.1:0"), {});
    REQUIRE(a.has_value());
    auto addr = local_address(a->get());
    REQUIRE(addr.has_value());
    auto b = listen_socket(*addr, {});
    CHECK(b.has_value());
    listen_options exclusive;
    exclusive.reuse_port = false;
    auto c = listen_socket(*addr, exclusive);
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error() == std::errc::address_in_use);
}

TEST_CASE("multishot accept takes many connections from one submission", "[net]") {
    auto ex = make_executor();
    auto lfd = listen_socket(*socket_address::parse("127.0.0.1:0"), {});
    REQUIRE(lfd.has_value());
    auto addr = *local_address(lfd->get());
    int accepted = ex->run([](int lfd, socket_address addr) -> task<int> {
        // More than accept_stream::max_ready: the stream stops and starts
        // again as the reader catches up.
        constexpr int clients = 200;
        std::vector<owned_fd> fds;
        for (int i = 0; i < clients; ++i) {
            auto fd = tcp_socket(AF_INET);
            REQUIRE(fd.has_value());
            // Never co_await inside a Catch macro: the macro repeats its
            // expression in an unevaluated branch, and GCC 12's coroutine
            // lowering has been seen to run both.
            auto ec = co_await connect(fd->get(), addr);
            REQUIRE_FALSE(ec);
            fds.push_back(std::move(*fd));
        }
        accept_stream incoming(lfd);
        int n = 0;
        while (n < clients) {
            auto fd = co_await incoming.next();
            REQUIRE(fd.has_value());
            ++n;
        }
        co_await incoming.stop();
        co_return n;
    }(lfd->get(), addr));
    CHECK(accepted == 200);
}

TEST_CASE("accepts go to the main ring: a burst of connections does not preempt the running slice", "[net]") {
    auto ex = make_executor();
    auto lfd = listen_socket(*socket_address::parse("127.0.0.1:0"), {});
    REQUIRE(lfd.has_value());
    auto addr = *local_address(lfd->get());
    auto preempted = ex->run([](int lfd, socket_address addr) -> task<bool> {
        accept_stream incoming(lfd);
        auto first_client = tcp_socket(AF_INET);
        REQUIRE(first_client.has_value());
        auto ec = co_await connect(first_client->get(), addr);
        REQUIRE_FALSE(ec);
        auto first = co_await incoming.next();  // the multishot accept is armed
        REQUIRE(first.has_value());
        std::vector<owned_fd> clients;
        for (int i = 0; i < 20; ++i) {
            auto c = tcp_socket(AF_INET);
            REQUIRE(c.has_value());
            auto cec = co_await connect(c->get(), addr);
            REQUIRE_FALSE(cec);
            clients.push_back(std::move(*c));
        }
        // Their accept CQEs are on the main ring: the latency ring, which
        // need_preempt() watches, has nothing.
        bool any_preempt = false;
        for (int i = 0; i < 20; ++i) {
            auto fd = co_await incoming.next();
            REQUIRE(fd.has_value());
            any_preempt |= executor::current()->need_preempt();
        }
        co_await incoming.stop();
        co_return any_preempt;
    }(lfd->get(), addr));
    CHECK_FALSE(preempted);
}

TEST_CASE("a dry buffer ring ends the receive with ENOBUFS; releasing buffers resumes it", "[net][buffers]") {
    auto ex = make_executor();
    // 4 buffers of 64 bytes for a 4 KiB message: the ring must run dry.
    auto br = buffer_ring::create(ex->main_ring(), 2, 4, 64);
    REQUIRE(br.has_value());
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    const auto data = pattern(4096, 3);
    REQUIRE(::send(sv[1], data.data(), data.size(), 0) == static_cast<ssize_t>(data.size()));
    auto result =
        ex->run([](int fd, buffer_ring& br, std::size_t want) -> task<std::pair<std::vector<std::byte>, int>> {
            recv_stream in(fd, br);
            std::vector<std::byte> got;
            std::vector<std::uint16_t> held;
            int enobufs = 0;
            while (got.size() < want) {
                auto chunk = co_await in.next();
                if (!chunk) {
                    REQUIRE(chunk.error() == std::errc::no_buffer_space);
                    ++enobufs;
                    for (auto bid : held) {
                        br.release(bid);
                    }
                    held.clear();
                    continue;
                }
                got.insert(got.end(), chunk->data.begin(), chunk->data.end());
                held.push_back(chunk->buffer_id);  // hold on, to drain the ring
            }
            for (auto bid : held) {
                br.release(bid);
            }
            co_return std::pair{got, enobufs};
        }(sv[0], **br, data.size()));
    CHECK(result.first == data);
    CHECK(result.second > 0);
    CHECK((*br)->exhausted() == static_cast<std::uint64_t>(result.second));
    CHECK((*br)->in_use() == 0);
    ::close(sv[0]);
    ::close(sv[1]);
}

TEST_CASE("half-close: the receiver sees end of stream", "[net]") {
    auto ex = make_executor();
    auto br = buffer_ring::create(ex->main_ring(), 3, 8, 1024);
    REQUIRE(br.has_value());
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    REQUIRE(::send(sv[1], "abc", 3, 0) == 3);
    REQUIRE(::shutdown(sv[1], SHUT_WR) == 0);
    auto got = ex->run([](int fd, buffer_ring& br) -> task<std::string> {
        recv_stream in(fd, br);
        std::string s;
        for (;;) {
            auto chunk = co_await in.next();
            REQUIRE(chunk.has_value());
            if (chunk->data.empty()) {
                co_return s;
            }
            s.append(reinterpret_cast<const char*>(chunk->data.data()), chunk->data.size());
            br.release(chunk->buffer_id);
        }
    }(sv[0], **br));
    CHECK(got == "abc");
    ::close(sv[0]);
    ::close(sv[1]);
}

TEST_CASE("close_socket() cancels a pending receive instead of leaving it hanging", "[net]") {
    auto ex = make_executor();
    auto br = buffer_ring::create(ex->main_ring(), 4, 8, 1024);
    REQUIRE(br.has_value());
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    auto err = ex->run([](int fd, buffer_ring& br) -> task<std::error_code> {
        recv_stream in(fd, br);
        auto closer = executor::current()->spawn([](int fd) -> task<std::error_code> {
            co_await sleep_for(5ms);
            co_return close_socket(fd);
        }(fd));
        auto r = co_await in.next();
        auto closed = co_await closer;
        CHECK_FALSE(closed);
        co_return r ? std::error_code{} : r.error();
    }(sv[0], **br));
    CHECK(err == std::errc::operation_canceled);
    CHECK(ex->main_ring().in_flight() <= 2);  // the eventfd/poll housekeeping only
    ::close(sv[1]);
}

TEST_CASE("stop() waits until the kernel has let go of the receive; later data takes no buffer", "[net]") {
    auto ex = make_executor();
    auto br = buffer_ring::create(ex->main_ring(), 5, 8, 1024);
    REQUIRE(br.has_value());
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    auto result = ex->run([](int fd, int peer, buffer_ring& br) -> task<std::pair<unsigned, bool>> {
        recv_stream in(fd, br);
        REQUIRE(::send(peer, "x", 1, 0) == 1);
        auto first = co_await in.next();
        bool ok = first.has_value() && first->data.size() == 1;
        REQUIRE(ok);
        br.release(first->buffer_id);
        co_await in.stop();
        // Nothing of the receive is left in the kernel: new bytes stay in
        // the socket, and next() says canceled.
        REQUIRE(::send(peer, "yz", 2, 0) == 2);
        for (int i = 0; i < 5; ++i) {
            co_await nop();
        }
        auto after = co_await in.next();
        co_return std::pair{br.in_use(), !after && after.error() == std::errc::operation_canceled};
    }(sv[0], sv[1], **br));
    CHECK(result.first == 0);
    CHECK(result.second);
    char buf[8];
    CHECK(::recv(sv[0], buf, sizeof(buf), MSG_DONTWAIT) == 2);
    ::close(sv[0]);
    ::close(sv[1]);
}

TEST_CASE("a poll with a timeout on a socket that stays quiet ends timed_out", "[net][timers]") {
    auto ex = make_executor();
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    auto r = ex->run([](int fd) -> task<expected<std::uint32_t>> {
        co_return co_await poll_fd(fd, POLLIN).with_timeout(20ms);
    }(sv[0]));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == std::errc::timed_out);
    // And one that becomes readable in time says so.
    REQUIRE(::send(sv[1], "x", 1, 0) == 1);
    auto ready = ex->run([](int fd) -> task<expected<std::uint32_t>> {
        co_return co_await poll_fd(fd, POLLIN).with_timeout(10s);
    }(sv[0]));
    REQUIRE(ready.has_value());
    CHECK((*ready & POLLIN) != 0);
    ::close(sv[0]);
    ::close(sv[1]);
}

TEST_CASE("a MSG_DONTWAIT send into a full socket answers EAGAIN at once", "[net]") {
    auto ex = make_executor();
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    // Fill it with blocking-free sends first.
    std::vector<char> chunk(64 << 10, 'a');
    while (::send(sv[0], chunk.data(), chunk.size(), MSG_DONTWAIT) > 0) {
    }
    auto r = ex->run([](int fd, const char* data) -> task<expected<std::uint32_t>> {
        co_return co_await send_some(fd, data, 4096, MSG_DONTWAIT);
    }(sv[0], chunk.data()));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == std::errc::resource_unavailable_try_again);
    ::close(sv[0]);
    ::close(sv[1]);
}

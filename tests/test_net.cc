// Network primitives over real loopback sockets: listen with SO_REUSEPORT,
// multishot accept, multishot receive into a provided buffer ring (and its
// exhaustion), send_all, connect, half-close, close cancelling a receive.
#include "reactor/net.hh"

#include "tests/support/executor.hh"

#include <catch2/catch.hpp>
#include <cstring>
#include <numeric>
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
    auto fd = co_await incoming.next();
    REQUIRE(fd.has_value());
    std::size_t total = 0;
    {
        recv_stream in(*fd, br);
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
            auto sent = co_await send_all(*fd, chunk->data);
            br.release(chunk->buffer_id);
            REQUIRE(sent.has_value());
            total += *sent;
        }
    }
    co_await shutdown_socket(*fd, SHUT_WR);
    co_await close_socket(*fd);
    co_return total;
}

task<bool> client_round_trip(socket_address addr, std::vector<std::byte> data) {
    auto fd = tcp_socket(addr.family());
    REQUIRE(fd.has_value());
    auto ec = co_await connect(*fd, addr);
    REQUIRE_FALSE(ec);
    auto reader = executor::current()->spawn(read_exactly(*fd, data.size()));
    auto sent = co_await send_all(*fd, data);
    REQUIRE(sent.has_value());
    co_await shutdown_socket(*fd, SHUT_WR);
    auto back = co_await reader;
    co_await close_socket(*fd);
    co_return back == data;
}

void echo_test(const char* address) {
    auto ex = make_executor();
    auto addr = socket_address::parse(address);
    REQUIRE(addr.has_value());
    auto lfd = listen_socket(*addr, {});
    REQUIRE(lfd.has_value());
    auto bound = local_address(*lfd);
    REQUIRE(bound.has_value());
    CHECK(bound->port() != 0);
    auto br = buffer_ring::create(ex->main_ring(), 1, 64, 4096);
    REQUIRE(br.has_value());
    auto ok = ex->run([](int lfd, socket_address to, buffer_ring& br) -> task<bool> {
        auto server = executor::current()->spawn(echo_one(lfd, br));
        bool same = co_await client_round_trip(to, pattern(1 << 20, 7));
        std::size_t echoed = co_await server;
        co_return same&& echoed == (1u << 20);
    }(*lfd, *bound, **br));
    CHECK(ok);
    CHECK((*br)->in_use() == 0);
    ::close(*lfd);
}

}  // namespace

TEST_CASE("1 MiB echoes byte-exact over IPv4", "[net]") { echo_test("127.0.0.1:0"); }

TEST_CASE("1 MiB echoes byte-exact over IPv6", "[net]") { echo_test("[::1]:0"); }

TEST_CASE("SO_REUSEPORT lets several sockets bind one port", "[net]") {
    auto a = listen_socket(*socket_address::parse("127.0.0.1:0"), {});
    REQUIRE(a.has_value());
    auto addr = local_address(*a);
    REQUIRE(addr.has_value());
    auto b = listen_socket(*addr, {});
    CHECK(b.has_value());
    listen_options exclusive;
    exclusive.reuse_port = false;
    auto c = listen_socket(*addr, exclusive);
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error() == std::errc::address_in_use);
    ::close(*a);
    if (b) {
        ::close(*b);
    }
}

TEST_CASE("multishot accept takes many connections from one submission", "[net]") {
    auto ex = make_executor();
    auto lfd = listen_socket(*socket_address::parse("127.0.0.1:0"), {});
    REQUIRE(lfd.has_value());
    auto addr = *local_address(*lfd);
    int accepted = ex->run([](int lfd, socket_address addr) -> task<int> {
        constexpr int clients = 100;
        std::vector<int> fds;
        for (int i = 0; i < clients; ++i) {
            auto fd = tcp_socket(AF_INET);
            REQUIRE(fd.has_value());
            // Never co_await inside a Catch macro: the macro repeats its
            // expression in an unevaluated branch, and GCC 12's coroutine
            // lowering has been seen to run both.
            auto ec = co_await connect(*fd, addr);
            REQUIRE_FALSE(ec);
            fds.push_back(*fd);
        }
        accept_stream incoming(lfd);
        int n = 0;
        while (n < clients) {
            auto fd = co_await incoming.next();
            REQUIRE(fd.has_value());
            ::close(*fd);
            ++n;
        }
        for (int fd : fds) {
            ::close(fd);
        }
        co_return n;
    }(*lfd, addr));
    CHECK(accepted == 100);
    ::close(*lfd);
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
            co_return co_await close_socket(fd);
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

// Cancellation (reactor/abort_source.hh): an abort ends every wait it is
// given, in the kernel or not, before it starts or while it runs; it sticks,
// so a loop that waits again cannot miss it; a timer cancelled after its CQE
// was reaped still says "cancelled". And what a task that throws leaves
// behind: nothing (its socket closed, its connection slot back, the
// exception logged).
#include "reactor/abort_source.hh"
#include "reactor/event.hh"
#include "reactor/io.hh"
#include "reactor/net.hh"
#include "server/connection_slot.hh"

#include "tests/support/executor.hh"
#include "tests/support/socket_pair.hh"

#include <catch2/catch.hpp>
#include <fcntl.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sstream>
#include <sys/socket.h>
#include <unistd.h>

using namespace shardd;
using shardd::test::make_executor;
using shardd::test::socket_pair;

namespace {

bool is_open(int fd) { return fcntl(fd, F_GETFD) != -1; }

}  // namespace

TEST_CASE("an abort cancels an operation in the kernel; its buffer is the caller's again", "[abort]") {
    auto ex = make_executor();
    socket_pair sp;
    auto r = ex->run([](int fd) -> task<std::error_code> {
        abort_source stop;
        char buf[16];
        auto aborter = executor::current()->spawn([](abort_source& s) -> task<void> {
            co_await nop();  // the receive is in the kernel by now
            s.request_abort();
        }(stop));
        auto n = co_await recv_some(fd, buf, sizeof(buf)).with_abort(stop);
        co_await aborter;
        co_return n ? std::error_code{} : n.error();
    }(sp.fd[0]));
    CHECK(r == std::errc::operation_canceled);
    // The receive is gone: bytes sent now stay in the socket for us.
    REQUIRE(::send(sp.fd[1], "hi", 2, 0) == 2);
    char buf[4];
    CHECK(::recv(sp.fd[0], buf, sizeof(buf), MSG_DONTWAIT) == 2);
}

TEST_CASE("an operation awaited after the abort is never submitted", "[abort]") {
    auto ex = make_executor();
    socket_pair sp;
    auto r = ex->run([](int fd, int peer) -> task<std::pair<std::error_code, bool>> {
        abort_source stop;
        stop.request_abort();
        REQUIRE(::send(peer, "x", 1, 0) == 1);
        char buf[4];
        auto n = co_await recv_some(fd, buf, sizeof(buf)).with_abort(stop);
        // Had it been submitted, it would have taken the byte.
        const bool byte_still_there = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT) == 1;
        co_return std::pair{n ? std::error_code{} : n.error(), byte_still_there};
    }(sp.fd[0], sp.fd[1]));
    CHECK(r.first == std::errc::operation_canceled);
    CHECK(r.second);
}

TEST_CASE("an abort sticks: a loop that sleeps again after it ends at once", "[abort][timers]") {
    auto ex = make_executor();
    auto rounds = ex->run([]() -> task<int> {
        abort_source stop;
        auto aborter = executor::current()->spawn([](abort_source& s) -> task<void> {
            co_await sleep_for(3ms);
            s.request_abort();
        }(stop));
        int n = 0;
        // The idle sweep's shape: sleep, work, sleep again.
        for (;;) {
            sleep_op tick = sleep_for(1ms, stop);
            if (!co_await tick) {
                break;
            }
            ++n;
        }
        // However often it asks again.
        for (int i = 0; i < 3; ++i) {
            sleep_op again = sleep_for(1h, stop);
            const bool expired = co_await again;
            n += expired ? 1000 : 0;
        }
        co_await aborter;
        co_return n;
    }());
    CHECK(rounds < 1000);
}

TEST_CASE("a sleep cancelled after its CQE was reaped, before its task ran, says cancelled", "[abort][timers]") {
    auto ex = make_executor();
    auto expired = ex->run([]() -> task<bool> {
        executor* ex = executor::current();
        sleep_op s = sleep_for(1ms);
        auto sleeper = ex->spawn([](sleep_op& s) -> task<bool> { co_return co_await s; }(s));
        co_await yield();  // the sleeper queued its timer
        co_await nop();    // submitted with this
        const auto timer_in_flight = ex->main_ring().in_flight();
        // Hold the CPU until the timer has expired in the kernel, then wait
        // for another no-op: the io_uring_enter that completes it (inline,
        // first) also runs the timer's deferred completion (after it), so one
        // reap queues us, then the sleeper. We run first: the timer's CQE is
        // in, the sleeper has not run yet.
        const auto start = std::chrono::steady_clock::now();
        while (std::chrono::steady_clock::now() - start < 5ms) {
        }
        co_await nop();
        REQUIRE(ex->main_ring().in_flight() == timer_in_flight - 1);  // reaped
        REQUIRE_FALSE(sleeper.done());
        s.cancel();
        co_return co_await sleeper;
    }());
    CHECK_FALSE(expired);
}

TEST_CASE("an abort ends event waits, and only the aborted ones", "[abort]") {
    auto ex = make_executor();
    auto r = ex->run([]() -> task<std::pair<bool, bool>> {
        event e;
        abort_source stop;
        auto aborted = executor::current()->spawn(
            [](event& e, abort_source& s) -> task<bool> { co_return co_await e.wait(&s); }(e, stop));
        auto plain = executor::current()->spawn([](event& e) -> task<bool> { co_return co_await e.wait(); }(e));
        co_await yield();
        stop.request_abort();
        const bool first = co_await aborted;
        e.set();
        const bool second = co_await plain;
        co_return std::pair{first, second};
    }());
    CHECK_FALSE(r.first);
    CHECK(r.second);
}

TEST_CASE("an abort ends a receive stream's wait; stop() settles it; no buffer held", "[abort][net]") {
    auto ex = make_executor();
    auto br = buffer_ring::create(ex->main_ring(), 9, 8, 1024);
    REQUIRE(br.has_value());
    socket_pair sp;
    auto r = ex->run([](int fd, buffer_ring& br) -> task<std::pair<std::error_code, unsigned>> {
        abort_source stop;
        recv_stream in(fd, br, &stop);
        auto aborter = executor::current()->spawn([](abort_source& s) -> task<void> {
            co_await nop();
            s.request_abort();
        }(stop));
        auto chunk = co_await in.next();
        co_await aborter;
        co_await in.stop();
        co_return std::pair{chunk ? std::error_code{} : chunk.error(), br.in_use()};
    }(sp.fd[0], **br));
    CHECK(r.first == std::errc::operation_canceled);
    CHECK(r.second == 0);
}

TEST_CASE("an abort ends an accept stream's wait", "[abort][net]") {
    auto ex = make_executor();
    auto lfd = listen_socket(*socket_address::parse("127.0.0.1:0"), {});
    REQUIRE(lfd.has_value());
    auto err = ex->run([](int lfd) -> task<std::error_code> {
        abort_source stop;
        accept_stream incoming(lfd, &stop);
        auto aborter = executor::current()->spawn([](abort_source& s) -> task<void> {
            co_await nop();
            s.request_abort();
        }(stop));
        auto fd = co_await incoming.next();
        co_await aborter;
        co_await incoming.stop();
        co_return fd ? std::error_code{} : fd.error();
    }(lfd->get()));
    CHECK(err == std::errc::operation_canceled);
}

TEST_CASE("a task that throws closes its socket, gives its slot back, and is logged", "[abort]") {
    std::ostringstream log;
    auto previous = spdlog::default_logger();
    spdlog::set_default_logger(
        std::make_shared<spdlog::logger>("capture", std::make_shared<spdlog::sinks::ostream_sink_st>(log)));
    server::listener_shared shared(1);
    int raw = -1;
    {
        auto ex = make_executor();
        ex->run([](server::listener_shared& shared, int& raw) -> task<void> {
            auto fd = tcp_socket(AF_INET);
            REQUIRE(fd.has_value());
            raw = fd->get();
            auto slot = server::connection_slot::try_take(shared, 10);
            REQUIRE(slot);
            REQUIRE(shared.connections.load() == 1);
            // Detached, like a connection's task: nobody awaits it.
            (void)executor::current()->spawn([](owned_fd fd, server::connection_slot slot) -> task<void> {
                co_await nop();
                if (fd && slot) {
                    throw std::runtime_error("connection task failed");
                }
            }(std::move(*fd), std::move(slot)));
            for (int i = 0; i < 3; ++i) {
                co_await nop();
            }
        }(shared, raw));
        CHECK(ex->live_tasks() == 0);
    }
    spdlog::set_default_logger(previous);
    CHECK_FALSE(is_open(raw));
    CHECK(shared.connections.load() == 0);
    CHECK_THAT(log.str(), Catch::Contains("a task nobody awaited failed: connection task failed"));
}

TEST_CASE("connection_slot: at most `limit` taken, each given back once", "[abort]") {
    server::listener_shared shared(1);
    {
        auto a = server::connection_slot::try_take(shared, 2);
        auto b = server::connection_slot::try_take(shared, 2);
        auto c = server::connection_slot::try_take(shared, 2);
        CHECK(a);
        CHECK(b);
        CHECK_FALSE(c);
        CHECK(shared.connections.load() == 2);
        server::connection_slot moved = std::move(a);
        CHECK(shared.connections.load() == 2);
    }
    CHECK(shared.connections.load() == 0);
}

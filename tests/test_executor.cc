// The executor: tasks, spawn/join, exceptions, ring round trips, shutdown
// with tasks pending.
#include "reactor/executor.hh"
#include "reactor/io.hh"
#include "tests/support/executor.hh"

#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace shardd;
using shardd::test::make_executor;

namespace {

task<int> forty_two() { co_return 42; }

task<int> add_nested(int depth) {
    if (depth == 0) {
        co_return 0;
    }
    co_return 1 + co_await add_nested(depth - 1);
}

task<void> throws() {
    co_await nop();
    throw std::runtime_error("boom");
}

}  // namespace

TEST_CASE("run() returns the main task's value", "[executor]") {
    auto ex = make_executor();
    CHECK(ex->run(forty_two()) == 42);
    CHECK(executor::current() == ex.get());
}

TEST_CASE("deep await chains do not grow the stack", "[executor]") {
    auto ex = make_executor();
    // Symmetric transfer: 100k nested awaits run in constant stack space.
    // That needs the compiler to turn the resumption into a tail call, which
    // GCC does not do under AddressSanitizer: there the depth is modest.
#if defined(__SANITIZE_ADDRESS__)
    constexpr int depth = 1000;
#else
    constexpr int depth = 100000;
#endif
    CHECK(ex->run(add_nested(depth)) == depth);
}

TEST_CASE("a second executor on one thread is refused", "[executor]") {
    auto ex = make_executor();
    auto again = executor::create({});
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().code == std::errc::device_or_resource_busy);
    CHECK(again.error().message == "this thread already runs an executor");
}

TEST_CASE("spawned tasks run and join with their results", "[executor]") {
    auto ex = make_executor();
    int total = ex->run([]() -> task<int> {
        std::vector<join_handle<int>> handles;
        for (int i = 0; i < 1000; ++i) {
            handles.push_back(executor::current()->spawn([](int v) -> task<int> {
                co_await yield();
                co_return v;
            }(i)));
        }
        int sum = 0;
        for (auto& h : handles) {
            sum += co_await h;
        }
        co_return sum;
    }());
    CHECK(total == 999 * 1000 / 2);
    CHECK(ex->live_tasks() == 0);
}

TEST_CASE("exceptions travel to the joiner", "[executor]") {
    auto ex = make_executor();
    CHECK_THROWS_WITH(ex->run(throws()), "boom");
    bool caught = ex->run([]() -> task<bool> {
        auto h = executor::current()->spawn(throws());
        try {
            co_await h;
        } catch (const std::runtime_error&) {
            co_return true;
        }
        co_return false;
    }());
    CHECK(caught);
}

TEST_CASE("operations complete through the rings", "[executor]") {
    auto ex = make_executor();
    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    auto r = ex->run([](int rd, int wr) -> task<std::string> {
        auto n = co_await nop();
        REQUIRE(n.has_value());
        const char msg[] = "hello";
        auto w = co_await write(wr, msg, 5, 0);
        REQUIRE(w.has_value());
        CHECK(*w == 5);
        char buf[16] = {};
        auto got = co_await read(rd, buf, sizeof(buf), 0);
        REQUIRE(got.has_value());
        co_return std::string(buf, *got);
    }(fds[0], fds[1]));
    CHECK(r == "hello");
    // A failing operation returns its errno as an error_code.
    auto bad = ex->run([]() -> task<std::error_code> {
        char b;
        auto e = co_await read(-1, &b, 1, 0);
        co_return e ? std::error_code{} : e.error();
    }());
    CHECK(bad == std::errc::bad_file_descriptor);
    close(fds[0]);
    close(fds[1]);
}

TEST_CASE("a linked timeout cancels an operation that does not complete", "[executor][timers]") {
    auto ex = make_executor();
    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    auto err = ex->run([](int rd) -> task<std::error_code> {
        char b;
        auto r = co_await with_timeout(read(rd, &b, 1, 0), 20ms);
        co_return r ? std::error_code{} : r.error();
    }(fds[0]));
    CHECK(err == std::errc::timed_out);
    // And one that completes in time is unaffected.
    REQUIRE(::write(fds[1], "x", 1) == 1);
    auto ok = ex->run([](int rd) -> task<bool> {
        char b;
        auto r = co_await with_timeout(read(rd, &b, 1, 0), 10s);
        co_return r.has_value() && *r == 1 && b == 'x';
    }(fds[0]));
    CHECK(ok);
    close(fds[0]);
    close(fds[1]);
}

TEST_CASE("an executor stopped with tasks pending cancels their operations and frees them", "[executor]") {
    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    static int destroyed = 0;
    destroyed = 0;
    struct guard {
        ~guard() { ++destroyed; }
    };
    {
        auto ex = make_executor();
        ex->run([](int rd) -> task<void> {
            executor* e = executor::current();
            for (int i = 0; i < 100; ++i) {
                (void)e->spawn([](int fd) -> task<void> {
                    guard g;
                    char b;
                    co_await read(fd, &b, 1, 0);  // never completes
                }(rd));
                (void)e->spawn([]() -> task<void> {
                    guard g;
                    co_await sleep_for(1h);
                }());
            }
            co_await yield();  // let them start
            co_await yield();
            e->request_stop();
        }(fds[0]));
        CHECK(ex->live_tasks() == 200);
    }
    CHECK(destroyed == 200);
    close(fds[0]);
    close(fds[1]);
}

TEST_CASE("a task that holds the CPU past the stall threshold is counted and logged", "[executor][stall]") {
    executor_config cfg;
    cfg.stall_threshold = 20ms;
    auto ex = make_executor(cfg);
    ex->run([]() -> task<void> {
        // 100ms without a suspension point: one slice, well past 20ms.
        const auto until = std::chrono::steady_clock::now() + 100ms;
        while (std::chrono::steady_clock::now() < until) {
        }
        co_return;
    }());
    CHECK(ex->stalls() == 1);
}

TEST_CASE("spin_before_park keeps the executor awake through short waits", "[executor]") {
    executor_config cfg;
    // Spinning for up to 10s: a 5ms sleep completes during the spin, so the
    // executor never has to park.
    cfg.spin_before_park = 10s;
    {
        auto ex = make_executor(cfg);
        ex->run([]() -> task<void> { co_await sleep_for(5ms); }());
        CHECK(ex->parks() == 0);
    }
    // Without spinning, the same wait parks.
    auto ex = make_executor({});
    ex->run([]() -> task<void> { co_await sleep_for(5ms); }());
    CHECK(ex->parks() > 0);
}

TEST_CASE("the io_memory arena is registered with the main and poll rings", "[executor][io_memory]") {
    executor_config cfg;
    cfg.io_memory = 1u << 20;
    auto ex = make_executor(cfg);
    REQUIRE(ex->arena() != nullptr);
    CHECK(ex->arena()->capacity() == (1u << 20));
    if (ex->uses_epoll()) {
        // Nothing to register with: the arena is plain memory there.
        CHECK_FALSE(ex->arena()->registered());
    } else if (geteuid() == 0) {
        // CI runs as root (CAP_IPC_LOCK); elsewhere RLIMIT_MEMLOCK decides.
        CHECK(ex->arena()->registered());
    }
}

TEST_CASE("an executor starts without registered buffers when memlock is too small", "[executor][io_memory]") {
    // In a child: become an unprivileged user (no CAP_IPC_LOCK), allow 2 MiB
    // of locked memory — enough for small rings, not for an 8 MiB arena
    // registered twice — and start an executor. It must start, warn, and run.
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        if (geteuid() == 0 && setuid(65534) != 0) {
            _exit(10);
        }
        rlimit lim{2u << 20, 2u << 20};
        if (setrlimit(RLIMIT_MEMLOCK, &lim) != 0) {
            _exit(11);
        }
        executor_config cfg;
        cfg.ring_entries = 64;
        cfg.io_memory = 8u << 20;
        auto ex = executor::create(cfg);
        if (!ex) {
            _exit(12);
        }
        if ((*ex)->arena() == nullptr || (*ex)->arena()->registered()) {
            _exit(13);
        }
        const bool ok = (*ex)->run([]() -> task<bool> {
            auto r = co_await nop();
            co_return r.has_value();
        }());
        _exit(ok ? 0 : 14);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    INFO("child exit status " << WEXITSTATUS(status) << " (10 setuid, 11 setrlimit, 12 create, 13 registered, 14 nop)");
    CHECK(WEXITSTATUS(status) == 0);
}

// Timers: ordering, absolute deadlines, cancellation.
#include "reactor/executor.hh"
#include "reactor/io.hh"

#include "tests/support/executor.hh"

#include <catch2/catch.hpp>

using namespace shardd;
using shardd::test::make_executor;

namespace {}  // namespace

TEST_CASE("sleepers wake in deadline order", "[timers]") {
    auto ex = make_executor();
    auto order = ex->run([]() -> task<std::vector<int>> {
        std::vector<int> woke;
        std::vector<join_handle<void>> hs;
        // Spawned in scrambled order; deadlines 10ms apart, generous against
        // a loaded CI machine's scheduling noise.
        for (int i : {3, 0, 4, 1, 2}) {
            hs.push_back(executor::current()->spawn([](int n, std::vector<int>& out) -> task<void> {
                co_await sleep_for(std::chrono::milliseconds(10 * (n + 1)));
                out.push_back(n);
            }(i, woke)));
        }
        for (auto& h : hs) {
            co_await h;
        }
        co_return woke;
    }());
    CHECK(order == std::vector<int>{0, 1, 2, 3, 4});
}

TEST_CASE("a sleep lasts at least its duration", "[timers]") {
    auto ex = make_executor();
    auto elapsed = ex->run([]() -> task<nanoseconds> {
        auto start = std::chrono::steady_clock::now();
        bool expired = co_await sleep_for(20ms);
        CHECK(expired);
        co_return std::chrono::steady_clock::now() - start;
    }());
    CHECK(elapsed >= 20ms);
}

TEST_CASE("sleep_until takes an absolute steady_clock deadline", "[timers]") {
    auto ex = make_executor();
    auto deadline = std::chrono::steady_clock::now() + 15ms;
    auto woke = ex->run([](auto d) -> task<std::chrono::steady_clock::time_point> {
        co_await sleep_until(d);
        co_return std::chrono::steady_clock::now();
    }(deadline));
    CHECK(woke >= deadline);
    // A deadline in the past returns at once.
    CHECK(ex->run([]() -> task<bool> { co_return co_await sleep_until(std::chrono::steady_clock::now() - 1s); }()));
}

TEST_CASE("a cancelled sleep resumes early and says so", "[timers]") {
    auto ex = make_executor();
    auto result = ex->run([]() -> task<std::pair<bool, nanoseconds>> {
        auto start = std::chrono::steady_clock::now();
        sleep_op long_sleep = sleep_for(1h);
        auto canceller = executor::current()->spawn([](sleep_op& s) -> task<void> {
            co_await sleep_for(5ms);
            s.cancel();
        }(long_sleep));
        bool expired = co_await long_sleep;
        co_await canceller;
        co_return std::pair{expired, std::chrono::steady_clock::now() - start};
    }());
    CHECK_FALSE(result.first);
    CHECK(result.second < 1h);
}

TEST_CASE("zero and negative sleeps do not suspend", "[timers]") {
    auto ex = make_executor();
    CHECK(ex->run([]() -> task<bool> { co_return co_await sleep_for(0ns); }()));
    CHECK(ex->run([]() -> task<bool> { co_return co_await sleep_for(-5ms); }()));
}

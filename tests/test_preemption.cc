// Preemption: a latency-class task gets the CPU within its latency bound
// while a throughput task spins (calling yield_if_needed()).
#include "reactor/executor.hh"
#include "reactor/io.hh"

#include "tests/support/executor.hh"
#include <algorithm>

#include <catch2/catch.hpp>

using namespace shardd;

namespace {

void spin_for(nanoseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
    }
}

}  // namespace

TEST_CASE("a latency-class task preempts a spinning throughput task within 2x its bound", "[preemption]") {
    auto ex = test::make_executor();
    executor& e = *ex;
    constexpr auto bound = 5ms;
    auto fast = e.create_task_queue("latency", reference_shares, bound);
    auto bulk = e.create_task_queue("bulk");
    bool stop = false;
    std::vector<nanoseconds> lateness;
    e.run([](executor& e, task_queue_handle fast, task_queue_handle bulk, bool& stop,
             std::vector<nanoseconds>& lateness) -> task<void> {
        auto spinner = e.spawn(bulk, [](bool& stop) -> task<void> {
            while (!stop) {
                spin_for(10us);
                co_await yield_if_needed();
            }
        }(stop));
        auto sleeper = e.spawn(fast, [](std::vector<nanoseconds>& lateness) -> task<void> {
            for (int i = 0; i < 40; ++i) {
                const auto deadline = std::chrono::steady_clock::now() + 3ms;
                co_await sleep_until(deadline);
                lateness.push_back(std::chrono::steady_clock::now() - deadline);
            }
        }(lateness));
        co_await sleeper;
        stop = true;
        co_await spinner;
    }(e, fast, bulk, stop, lateness));
    REQUIRE(lateness.size() == 40);
    std::sort(lateness.begin(), lateness.end());
    // The median is the mechanism; a 2-core CI machine may deschedule the
    // whole thread now and then, which no reactor can help, so the check is
    // on the median and the 90th percentile, not the maximum.
    INFO("median " << lateness[20].count() / 1000 << "us, p90 " << lateness[36].count() / 1000 << "us, max "
                   << lateness.back().count() / 1000 << "us");
    CHECK(lateness[20] < 2 * bound);
    CHECK(lateness[36] < 2 * bound);
    CHECK(e.stats(bulk).preempted > 0);
}

TEST_CASE("need_preempt() is false on an idle executor and yield_if_needed() does not suspend", "[preemption]") {
    auto ex = test::make_executor();
    CHECK_FALSE(ex->need_preempt());
    auto resumptions = ex->run([]() -> task<std::uint64_t> {
        for (int i = 0; i < 1000; ++i) {
            co_await yield_if_needed();
        }
        co_return executor::current()->stats(executor::current()->default_queue()).tasks_run;
    }());
    // One resumption: the task ran through all 1000 calls without suspending
    // (the count is taken while that first resumption is still running).
    CHECK(resumptions == 0);
}

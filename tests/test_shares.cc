// Task queues with shares: CPU-bound queues get runtime in proportion to
// their shares, measured by the scheduler's own accounting.
#include "reactor/executor.hh"
#include "reactor/io.hh"

#include "tests/support/executor.hh"

#include <catch2/catch.hpp>

using namespace shardd;

namespace {

// Burns about `d` of CPU.
void spin_for(nanoseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
    }
}

task<void> cpu_bound(const bool& stop) {
    while (!stop) {
        spin_for(20us);
        co_await yield_if_needed();
    }
}

}  // namespace

TEST_CASE("two CPU-bound queues with shares 2:1 get a 2:1 runtime ratio", "[shares]") {
    auto ex = test::make_executor();
    executor& e = *ex;
    auto a = e.create_task_queue("a", 2000);
    auto b = e.create_task_queue("b", 1000);
    bool stop = false;
    e.run([](executor& e, task_queue_handle a, task_queue_handle b, bool& stop) -> task<void> {
        auto ha = e.spawn(a, cpu_bound(stop));
        auto hb = e.spawn(b, cpu_bound(stop));
        // Let them compete until the scheduler has handed out 600ms between
        // them (the measurement is the scheduler's accounting, not a timer).
        while (e.stats(a).runtime + e.stats(b).runtime < 600ms) {
            co_await sleep_for(10ms);
        }
        stop = true;
        co_await ha;
        co_await hb;
    }(e, a, b, stop));
    const double ra = static_cast<double>(e.stats(a).runtime.count());
    const double rb = static_cast<double>(e.stats(b).runtime.count());
    INFO("a " << ra / 1e6 << "ms, b " << rb / 1e6 << "ms, slices a " << e.stats(a).slices << " b "
              << e.stats(b).slices);
    CHECK(ra / rb == Approx(2.0).epsilon(0.10));
    CHECK(e.stats(a).preempted > 0);
    CHECK(e.stats(b).preempted > 0);
}

TEST_CASE("equal shares split evenly; a queue that slept gets no banked credit", "[shares]") {
    auto ex = test::make_executor();
    executor& e = *ex;
    auto a = e.create_task_queue("a");
    auto b = e.create_task_queue("b");
    bool stop = false;
    e.run([](executor& e, task_queue_handle a, task_queue_handle b, bool& stop) -> task<void> {
        auto ha = e.spawn(a, cpu_bound(stop));
        // b starts late: a runs alone for 100ms first.
        while (e.stats(a).runtime < 100ms) {
            co_await sleep_for(5ms);
        }
        const auto a_alone = e.stats(a).runtime;
        auto hb = e.spawn(b, cpu_bound(stop));
        while (e.stats(b).runtime < 200ms) {
            co_await sleep_for(10ms);
        }
        stop = true;
        co_await ha;
        co_await hb;
        // Since b joined, a and b have shared the CPU about evenly: b did not
        // get to monopolise it to "catch up" on a's head start.
        const double a_shared = static_cast<double>((e.stats(a).runtime - a_alone).count());
        const double b_shared = static_cast<double>(e.stats(b).runtime.count());
        INFO("a " << a_shared / 1e6 << "ms, b " << b_shared / 1e6 << "ms since b joined");
        CHECK(a_shared / b_shared == Approx(1.0).epsilon(0.15));
    }(e, a, b, stop));
}

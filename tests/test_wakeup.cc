// Cross-shard wake-up under stress: 10^5 messages in bursts, the receiver
// sleeping between bursts; none may be lost, and the run ends in bounded time.
#include "reactor/executor_pool.hh"
#include "reactor/io.hh"

#include <atomic>
#include <thread>

#include <catch2/catch.hpp>

using namespace shardd;

namespace {

struct counter {
    std::uint64_t received = 0;  // touched only on the receiving shard
};

void bump(void* arg) { ++static_cast<counter*>(arg)->received; }

}  // namespace

TEST_CASE("100000 cross-shard messages with a sleeping receiver: none lost", "[wakeup][channels]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    if (allowed->size() < 2) {
        // Two shards on one CPU still exercise the protocol.
        allowed = cpu_set({allowed->cpus()[0], allowed->cpus()[0]});
    }
    cpu_set two({allowed->cpus()[0], allowed->cpus()[1]});
    constexpr int bursts = 1000;
    constexpr int per_burst = 100;
    counter c;
    std::uint64_t receiver_parks = 0;
    std::uint64_t final_count = 0;
    auto pool = executor_pool::start(two, executor_builder(), [&](unsigned shard) -> task<void> {
        if (shard == 1) {
            co_return;  // the receiver only serves messages
        }
        for (int b = 0; b < bursts; ++b) {
            for (int i = 0; i < per_burst; ++i) {
                shard_mesh::current()->send(1, {&bump, &c});
            }
            // Every 10th burst: wait until the receiver has drained (a
            // round trip queues behind the burst), then give it 2ms with
            // nothing to do, in which it parks; the next burst must wake it.
            if (b % 10 == 0) {
                co_await submit_to(1, [] { return 0; });
                co_await sleep_for(2ms);
            } else {
                co_await yield();
            }
        }
        // The round trip below queues behind every message sent above.
        final_count = co_await submit_to(1, [&] { return c.received; });
        receiver_parks = co_await submit_to(1, [] { return executor::current()->parks(); });
    });
    REQUIRE(pool.has_value());
    (*pool)->join();
    CHECK(final_count == bursts * per_burst);
    INFO("receiver parked " << receiver_parks << " times");
    CHECK(receiver_parks >= 10);
}

TEST_CASE("a sender with a backlog towards a receiver that does not drain sleeps until there is room",
          "[wakeup][channels]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    if (allowed->size() < 2) {
        allowed = cpu_set({allowed->cpus()[0], allowed->cpus()[0]});
    }
    cpu_set two({allowed->cpus()[0], allowed->cpus()[1]});
    // Three queues' worth: two of them wait in the sender's backlog.
    constexpr std::uint64_t messages = 3 * shard_mesh::default_queue_capacity;
    // How long the receiver's thread stays blocked (not draining). Only a
    // measuring window: a sender that spins uses all of it.
    constexpr std::chrono::milliseconds window = 1s;
    counter c;
    std::atomic<int> phase{0};  // 1: the sender has queued everything; 2: the receiver may go on
    std::uint64_t final_count = 0;
    std::uint64_t parks_while_waiting = 0;
    std::size_t backlog = 0;
    nanoseconds sender_cpu{0};
    auto thread_cpu = [] {
        timespec ts{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return nanoseconds(std::chrono::seconds(ts.tv_sec)) + nanoseconds(ts.tv_nsec);
    };
    auto pool = executor_pool::start(two, executor_builder(), [&](unsigned shard) -> task<void> {
        if (shard == 1) {
            // Blocks this shard's whole thread: its inbox is not drained.
            while (phase.load() < 2) {
                phase.wait(phase.load());
            }
            co_return;
        }
        for (std::uint64_t i = 0; i < messages; ++i) {
            shard_mesh::current()->send(1, {&bump, &c});
        }
        backlog = shard_mesh::current()->backlog();  // checked on the test's thread: Catch is not thread-safe
        const auto cpu_before = thread_cpu();
        const auto parks_before = executor::current()->parks();
        phase = 1;
        phase.notify_all();
        // Queues behind the backlog; nothing else to do until it is answered.
        final_count = co_await submit_to(1, [&] { return c.received; });
        sender_cpu = thread_cpu() - cpu_before;
        parks_while_waiting = executor::current()->parks() - parks_before;
    });
    REQUIRE(pool.has_value());
    while (phase.load() < 1) {
        phase.wait(0);
    }
    std::this_thread::sleep_for(window);  // the measuring window, not a synchronisation
    phase = 2;
    phase.notify_all();
    (*pool)->join();
    CHECK(backlog > 0);
    CHECK(final_count == messages);
    INFO("sender CPU while the receiver was blocked for 1 s: " << sender_cpu.count() / 1000 << " us");
    CHECK(parks_while_waiting >= 1);
    CHECK(sender_cpu < window / 4);  // a spinning sender uses (nearly) all of it
}

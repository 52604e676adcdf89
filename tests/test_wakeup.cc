// Cross-shard wake-up under stress: 10^5 messages in bursts, the receiver
// sleeping between bursts; none may be lost, and the run ends in bounded time.
#include "reactor/executor_pool.hh"
#include "reactor/io.hh"

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

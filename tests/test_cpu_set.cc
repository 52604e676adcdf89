// cpu_set, the allowed set and pinning a thread to one CPU.
#include "reactor/cpu_set.hh"

#include <catch2/catch.hpp>
#include <sched.h>
#include <thread>

using namespace shardd;

TEST_CASE("cpu_set keeps a sorted set and prints list format", "[cpu_set]") {
    cpu_set s({6, 0, 2, 1, 3, 1});
    CHECK(s.cpus() == std::vector<unsigned>{0, 1, 2, 3, 6});
    CHECK(s.to_string() == "0-3,6");
    CHECK(s.contains(6));
    CHECK_FALSE(s.contains(4));
    s.add(4);
    s.add(5);
    CHECK(s.to_string() == "0-6");
    CHECK(cpu_set().to_string().empty());
    CHECK(cpu_set({1, 3, 5}).to_string() == "1,3,5");
}

TEST_CASE("the allowed set is this process's affinity", "[cpu_set]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    REQUIRE_FALSE(allowed->empty());
    cpu_set_t mask;
    CPU_ZERO(&mask);
    REQUIRE(sched_getaffinity(0, sizeof(mask), &mask) == 0);
    CHECK(static_cast<int>(allowed->size()) == CPU_COUNT(&mask));
    for (unsigned cpu : allowed->cpus()) {
        CHECK(CPU_ISSET(cpu, &mask));
    }
}

TEST_CASE("a pinned thread's affinity is exactly its CPU", "[cpu_set]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    for (unsigned cpu : allowed->cpus()) {
        std::error_code ec;
        cpu_set seen;
        std::thread t([&] {
            ec = pin_current_thread(cpu);
            auto now = allowed_cpus();  // sched_getaffinity(0) is per thread
            if (now) {
                seen = *now;
            }
        });
        t.join();
        INFO("cpu " << cpu);
        CHECK_FALSE(ec);
        CHECK(seen.cpus() == std::vector<unsigned>{cpu});
    }
}

TEST_CASE("pinning to a CPU outside the allowed set is an error, not a crash", "[cpu_set]") {
    std::error_code ec;
    std::thread t([&] { ec = pin_current_thread(4095); });
    t.join();
    CHECK(ec == std::errc::invalid_argument);
}

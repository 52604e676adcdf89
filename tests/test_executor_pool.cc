// executor_pool: one pinned, named thread per CPU; start-up failures are
// errors; stop with tasks pending; submit_to across shards.
#include "reactor/executor_pool.hh"
#include "reactor/io.hh"

#include <catch2/catch.hpp>
#include <fstream>
#include <mutex>
#include <sched.h>

using namespace shardd;

namespace {

std::string thread_name() {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof(name));
    return name;
}

}  // namespace

TEST_CASE("each shard runs on exactly its CPU, in a thread named after it", "[pool]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    std::mutex m;
    std::vector<std::tuple<unsigned, std::string, cpu_set>> seen;
    auto pool = executor_pool::start(*allowed, executor_builder().name("shardd"), [&](unsigned shard) -> task<void> {
        auto affinity = allowed_cpus();  // per thread
        std::lock_guard g(m);
        seen.emplace_back(shard, thread_name(), affinity ? *affinity : cpu_set{});
        co_return;
    });
    REQUIRE(pool.has_value());
    (*pool)->join();
    REQUIRE(seen.size() == allowed->size());
    std::sort(seen.begin(), seen.end(), [](auto& a, auto& b) { return std::get<0>(a) < std::get<0>(b); });
    for (unsigned i = 0; i < seen.size(); ++i) {
        CHECK(std::get<0>(seen[i]) == i);
        CHECK(std::get<1>(seen[i]) == "shardd/" + std::to_string(i));
        CHECK(std::get<2>(seen[i]).cpus() == std::vector<unsigned>{allowed->cpus()[i]});
    }
    CHECK((*pool)->errors() == std::vector<std::string>(allowed->size()));
}

TEST_CASE("a shard that cannot start is reported, and no shard keeps running", "[pool]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    cpu_set cpus = *allowed;
    cpus.add(4000);  // not a CPU this process may use
    int ran = 0;
    auto pool = executor_pool::start(cpus, executor_builder(), [&](unsigned) -> task<void> {
        ++ran;
        co_return;
    });
    REQUIRE_FALSE(pool.has_value());
    CHECK_THAT(pool.error(), Catch::Contains("cannot pin to CPU 4000"));
    CHECK(ran == 0);
}

TEST_CASE("stopping a pool with tasks pending returns promptly", "[pool]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    std::atomic<int> started{0};
    auto pool = executor_pool::start(*allowed, executor_builder(), [&](unsigned) -> task<void> {
        for (int i = 0; i < 50; ++i) {
            (void)executor::current()->spawn([]() -> task<void> { co_await sleep_for(1h); }());
        }
        started.fetch_add(1);
        co_await sleep_for(1h);
    });
    REQUIRE(pool.has_value());
    // Wait (bounded) until every shard has set up its tasks, without sleeping:
    // each shard signals through the counter after spawning.
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (started.load() < static_cast<int>(allowed->size()) && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::yield();
    }
    REQUIRE(started.load() == static_cast<int>(allowed->size()));
    (*pool)->stop();
    CHECK((*pool)->size() == 0);
}

TEST_CASE("submit_to runs a function or a task on another shard and returns its result", "[pool][channels]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    std::atomic<unsigned> answer{0};
    auto pool = executor_pool::start(*allowed, executor_builder(), [&](unsigned shard) -> task<void> {
        if (shard != 0) {
            co_return;
        }
        const unsigned other = static_cast<unsigned>(shard_count() - 1);
        unsigned where = co_await submit_to(other, [] { return this_shard_id(); });
        unsigned slept = co_await submit_to(other, []() -> task<unsigned> {
            co_await sleep_for(1ms);
            co_return this_shard_id() + 100;
        });
        co_await submit_to(0, [] {});  // to ourselves: through the executor, not inline
        bool threw = false;
        try {
            co_await submit_to(other, []() -> int { throw std::runtime_error("remote"); });
        } catch (const std::runtime_error& e) {
            threw = std::string(e.what()) == "remote";
        }
        answer = where * 1000 + slept + (threw ? 1 : 0) * 10000;
    });
    REQUIRE(pool.has_value());
    (*pool)->join();
    const unsigned other = static_cast<unsigned>(allowed->size() - 1);
    CHECK(answer.load() == 10000 + other * 1000 + other + 100);
}

TEST_CASE("executor_builder::spawn runs one named executor, pinned before it starts", "[pool][builder]") {
    auto allowed = allowed_cpus();
    REQUIRE(allowed.has_value());
    const unsigned cpu = allowed->cpus().back();
    std::string name;
    cpu_set affinity;
    auto one = executor_builder().name("worker").pin_to_cpu(cpu).spawn([&]() -> task<void> {
        name = thread_name();
        affinity = *allowed_cpus();
        co_await sleep_for(1ms);
    });
    REQUIRE(one.has_value());
    (*one)->join();
    CHECK(name == "worker");
    CHECK(affinity.cpus() == std::vector<unsigned>{cpu});
    // Unpinned: the thread keeps the process's affinity.
    auto free_running = executor_builder().name("free").spawn([&]() -> task<void> {
        affinity = *allowed_cpus();
        co_return;
    });
    REQUIRE(free_running.has_value());
    (*free_running)->join();
    CHECK(affinity == *allowed);
}

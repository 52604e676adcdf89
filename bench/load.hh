#pragma once
// One client shard of shardd-bench: its connections, their senders and
// receivers, and what it measured.

#include "bench/histogram.hh"
#include "bench/options.hh"
#include "bench/pattern.hh"
#include "reactor/task.hh"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

namespace shardd::bench {

using clock = std::chrono::steady_clock;

// Written only by its shard; read by the main thread after the shard ends.
struct shard_result {
    latency_histogram latency;
    std::uint64_t messages = 0;  // measured (sent after the warm-up)
    std::uint64_t bytes = 0;     // measured, each direction
    std::uint64_t connected = 0;
    std::uint64_t connect_errors = 0;
    std::uint64_t resets = 0;
    std::uint64_t early_closes = 0;
    std::uint64_t verification_errors = 0;
    std::uint64_t behind_schedule = 0;  // open loop: sends later than intended
    std::uint64_t unanswered = 0;       // still in flight at the end
    std::string first_error;
};

// What the main thread polls once a second for the progress line. Another
// core reads these while the shard writes them, hence atomics (relaxed: a
// progress line needs no ordering) on a cache line of their own, so the
// shard's other writes do not bounce it.
struct alignas(64) live_counters {
    std::atomic<std::uint64_t> messages{0};
    std::atomic<std::uint64_t> errors{0};
    std::atomic<std::uint64_t> p99_ns{0};
    std::atomic<bool> done{false};
};

struct run_plan {
    const options* opts = nullptr;
    const pattern* bytes = nullptr;
    clock::time_point start;         // connections begin
    clock::time_point measure_from;  // end of warm-up
    clock::time_point stop;          // senders stop
};

task<void> run_shard(const run_plan& plan, unsigned shard, unsigned shards, shard_result& out, live_counters& live);

}  // namespace shardd::bench

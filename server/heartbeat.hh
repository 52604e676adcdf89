#pragma once
// A shard's sign of life: a timestamp the shard writes from a task of its own
// every heartbeat_period, read by the admin thread (/healthz) and by the main
// thread (the systemd watchdog). A beat is a task that ran on the shard's
// executor, so a shard stuck in one task (or not scheduled at all) stops
// beating: that is what both readers want to know.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

namespace shardd::server {

// alignas(64): each shard writes its own line every period; other threads
// only read it.
struct alignas(64) shard_heartbeat {
    std::atomic<std::int64_t> steady_ns{0};  // 0: never beaten

    void beat() noexcept;
};

// How often a shard beats, and how late a beat may be before /healthz calls
// the shard stuck. A shard's loop never runs a task longer than the stall
// threshold (50 ms by default) without yielding, so 10 periods is a stuck
// shard, not a busy one.
inline constexpr auto heartbeat_period = std::chrono::milliseconds(100);
inline constexpr auto heartbeat_late = std::chrono::seconds(1);

// CLOCK_MONOTONIC (steady_clock) in nanoseconds, the heartbeat's clock.
std::int64_t steady_now_ns() noexcept;

// The shards whose last beat is older than `bound` (or that never beat).
std::vector<unsigned> late_shards(const std::vector<shard_heartbeat>& beats, std::chrono::nanoseconds bound);

}  // namespace shardd::server

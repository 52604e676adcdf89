#pragma once
// A shard's reactor internals, published for other threads (the admin
// endpoint's /metrics and /stats). The executor keeps its counters in plain
// integers on its own thread, as it should: it bumps them per loop and per
// CQE. Instead of making those shared, the shard copies them here from its
// heartbeat task, every heartbeat_period (100 ms), with relaxed stores of
// single-writer atomics. A reader sees values at most that old, never torn,
// and the data path never touches a line another thread reads.

#include "server/counters.hh"

#include <array>
#include <atomic>
#include <cstdint>

namespace shardd {
class executor;
class buffer_ring;
}  // namespace shardd

namespace shardd::server {

// The server runs its tasks in the default queue alone today; room for a
// few more, named, before publication stops at this many.
inline constexpr std::size_t max_published_queues = 4;
// Queue names longer than this are cut (they are labels, not data).
inline constexpr std::size_t max_queue_name = 31;

// alignas(64): written by one shard every heartbeat, read by the admin
// thread; kept off the lines of everything else.
struct alignas(64) reactor_stats {
    struct ring_stats {
        shard_counter enters;  // io_uring_enter(2) calls
        shard_counter cqes;    // completions reaped
    };
    std::array<ring_stats, 3> rings;  // main, latency, poll (ring_names)
    shard_counter parks;              // times the loop slept in the kernel
    shard_counter eventfd_wakeups;    // woken by another thread's eventfd write
    shard_counter stalls;             // slices longer than stall_threshold
    shard_counter free_buffers;       // receive buffer ring: free now (a gauge)
    shard_counter total_buffers;      // receive buffer ring: size (a gauge)

    struct queue_stats {
        std::array<char, max_queue_name + 1> name{};  // written before count
        shard_counter runtime_ns;                     // CPU time the scheduler gave it
        shard_counter tasks_run;                      // coroutine resumptions
        shard_counter slices;                         // times it was picked
        shard_counter preempted;                      // slices cut short for latency work
    };
    std::array<queue_stats, max_published_queues> queues;
    // Queues published; a queue's name is written before this is raised
    // (release), so a reader that loads it (acquire) reads whole names.
    std::atomic<unsigned> queue_count{0};

    // On the shard's thread: copies `ex`'s counters (and `buffers`', if any).
    void publish(executor& ex, const buffer_ring* buffers) noexcept;
};

inline constexpr std::array<const char*, 3> ring_names = {"main", "latency", "poll"};

}  // namespace shardd::server

#pragma once
// A task queue: a named FIFO of runnable coroutines with a share of the CPU.
//
// The executor runs the active queue with the smallest virtual runtime; a
// queue that ran for t nanoseconds advances by t * reference_shares / shares,
// so over time queues get CPU in proportion to their shares (CFS's idea, as
// in Glommio and Seastar's scheduling groups). A queue with a latency
// requirement lowers the preemption timer to that bound while it is active,
// and its timers and receives go to the latency ring, whose completions
// preempt whatever is running.

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

namespace shardd {

using std::chrono::nanoseconds;

// Shares of a queue created without a number: the reference weight.
inline constexpr unsigned reference_shares = 1000;

struct task_queue_handle {
    unsigned index = 0;
    bool operator==(const task_queue_handle&) const = default;
};

struct task_queue_stats {
    std::string name;
    unsigned shares = reference_shares;
    std::optional<nanoseconds> latency;
    nanoseconds runtime{0};       // CPU time the scheduler gave this queue
    std::uint64_t tasks_run = 0;  // coroutine resumptions
    std::uint64_t slices = 0;     // times it was picked
    std::uint64_t preempted = 0;  // slices cut short by need_preempt()
};

namespace internal {

struct task_queue {
    task_queue_stats stats;
    std::deque<std::coroutine_handle<>> runnable;
    std::uint64_t vruntime = 0;
    bool active = false;  // in the executor's active set
    unsigned index = 0;
};

}  // namespace internal

}  // namespace shardd

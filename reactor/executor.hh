#pragma once
// executor: one thread's scheduler and its three io_uring rings.
//
// An executor is created on, and used from, exactly one thread (the rings are
// set up with IORING_SETUP_SINGLE_ISSUER). Other threads may only call
// request_stop() and wake(). executor_pool starts one per CPU.
//
//   auto ex = executor::create(cfg);          // on the thread that runs it
//   int v = (*ex)->run(main_task());          // until main_task completes

#include "reactor/completion.hh"
#include "reactor/expected.hh"
#include "reactor/internal/ring.hh"
#include "reactor/internal/root_list.hh"
#include "reactor/io_memory.hh"
#include "reactor/task.hh"
#include "reactor/task_queue.hh"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace shardd {

namespace internal {
struct root_task;
}

using namespace std::chrono_literals;

// Which I/O backend an executor runs on (reactor/internal/ring.hh is the
// seam; uring_ring.cc and epoll_ring.cc are the two sides of it).
enum class backend_choice : std::uint8_t {
    // io_uring when this kernel and sandbox allow it, else epoll. The
    // environment variable SHARDD_BACKEND=io_uring|epoll overrides `automatic`
    // (and only it): the test suite runs once per backend that way.
    automatic,
    io_uring,  // io_uring or fail to start, saying why
    epoll,     // epoll(7) and non-blocking system calls
};
const char* to_string(backend_choice b) noexcept;

struct executor_config {
    std::string name = "unnamed";
    backend_choice backend = backend_choice::automatic;
    // Submission queue entries per ring (the CQ gets 4x).
    unsigned ring_entries = 1024;
    // The registered fixed-buffer arena (0: none). Locked memory, charged
    // once per ring it is registered on (main and poll).
    std::size_t io_memory = 4u << 20;
    // Busy-poll for work this long before sleeping. 0: sleep at once.
    nanoseconds spin_before_park{0};
    // How long a task queue runs before latency-class work gets the CPU.
    // 500us is Seastar's default task quota.
    nanoseconds preempt_timer = 500us;
    // Log a scheduling slice longer than this (0: never).
    nanoseconds stall_threshold = 50ms;
};

// Something besides the rings that can make work: cross-shard channels.
// The executor polls it every loop iteration and before it sleeps.
class work_source {
public:
    virtual ~work_source() = default;
    // Processes what is pending; returns true if it did anything.
    virtual bool poll() = 0;
    // Cheap check, called after the executor announced it will sleep.
    virtual bool has_work() const = 0;
};

template <typename T>
class join_handle;

// Why an executor could not start: the errno, and a sentence for the log
// ("io_uring lacks IORING_OP_SEND_ZC (Linux 6.0+); this kernel is 5.15").
struct start_error {
    std::error_code code;
    std::string message;
};

class executor {
public:
    // Creates the rings, probes the opcodes the runtime needs, and arms the
    // eventfd. Call on the thread that will run it.
    static expected<std::unique_ptr<executor>, start_error> create(const executor_config& cfg);
    ~executor();
    executor(const executor&) = delete;
    executor& operator=(const executor&) = delete;

    // The executor of the calling thread, or nullptr.
    static executor* current() noexcept;

    const std::string& name() const noexcept { return _cfg.name; }
    // The backend this executor runs on: "io_uring" or "epoll".
    const char* backend_name() const noexcept;
    bool uses_epoll() const noexcept { return _epoll; }
    // Why `automatic` chose epoll (io_uring_refusal_reason(), or the probe's
    // missing opcodes); empty when it did not, or when epoll was asked for.
    const std::string& fallback_reason() const noexcept { return _fallback_reason; }
    const executor_config& config() const noexcept { return _cfg; }

    // Task queues.
    task_queue_handle create_task_queue(std::string name, unsigned shares = reference_shares,
                                        std::optional<nanoseconds> latency = std::nullopt);
    task_queue_handle default_queue() const noexcept { return {0}; }
    const task_queue_stats& stats(task_queue_handle q) const { return _queues[q.index]->stats; }
    // Queues created so far; handles are 0 .. queue_count() - 1.
    std::size_t queue_count() const noexcept { return _queues.size(); }

    // Starts `t` as a task of its own on queue `q` (or the current queue).
    template <typename T>
    join_handle<T> spawn(task_queue_handle q, task<T> t);
    template <typename T>
    join_handle<T> spawn(task<T> t) {
        return spawn(current_queue_handle(), std::move(t));
    }

    // Starts `t` on the current queue with no join_handle: for tasks that
    // end by themselves (a connection). An exception is logged.
    void spawn_detached(task<void> t);

    // Runs until `main` completes and returns its result (or rethrows).
    template <typename T>
    T run(task<T> main);
    // Runs until request_stop().
    void run();

    // Thread-safe: ask the loop to return. Pending tasks stay suspended and
    // are destroyed with the executor, after every in-flight operation has
    // been cancelled and reaped.
    void request_stop() noexcept;
    bool stop_requested() const noexcept { return _stop.load(std::memory_order_acquire); }

    // Thread-safe: wake the executor if it is asleep (or about to sleep).
    void wake() noexcept;

    // True when latency-class work is waiting: the latency ring has a CQE (a
    // latency I/O, an eventfd wake-up or the preemption timer). Two loads.
    bool need_preempt() const noexcept { return _latency->has_work(); }
    // For a running task that asks whether to yield (yield_if_needed()): as
    // need_preempt(), and starts the preemption timer if it is not running,
    // so that a task that keeps asking is told to yield within
    // preempt_timer. Only such tasks pay for the timer: arming it for every
    // slice cost a request/response server two extra io_uring_enter calls
    // and a spurious wake-up per message (the timer fired while it slept).
    bool should_yield() {
        if (!_preempt_armed) [[unlikely]] {
            arm_preempt_timer();
        }
        return need_preempt();
    }

    void add_work_source(work_source* s) { _sources.push_back(s); }

    // The fixed-buffer arena; registered() says whether *_fixed operations
    // may use it (when registration failed the executor runs without).
    io_memory* arena() noexcept { return _arena ? &*_arena : nullptr; }

    // Rings, for the operation awaitables in reactor/io.hh and reactor/net.hh.
    internal::ring& main_ring() noexcept { return *_main; }
    internal::ring& latency_ring() noexcept { return *_latency; }
    internal::ring& poll_ring() noexcept { return *_poll; }
    // The ring for timers and receives of the current task: latency-class
    // queues use the latency ring.
    internal::ring& ring_for_current() noexcept;

    // Scheduling, for awaitables: the running task's queue, and making a
    // suspended coroutine runnable again on its queue.
    internal::task_queue* current_queue() const noexcept { return _current; }
    task_queue_handle current_queue_handle() const noexcept {
        return _current ? task_queue_handle{_current->index} : default_queue();
    }
    void schedule(std::coroutine_handle<> h, internal::task_queue* q);

    // Counters, for tests and stats.
    std::uint64_t parks() const noexcept { return _parks; }
    std::uint64_t wakeups_by_eventfd() const noexcept { return _eventfd_wakeups; }
    // Slices longer than stall_threshold (each one logged).
    std::uint64_t stalls() const noexcept { return _stalls; }
    // O_DIRECT operations the poll ring refused (EOPNOTSUPP: the device does
    // not poll) and the main ring served instead.
    std::uint64_t poll_fallbacks() const noexcept { return _poll_fallbacks; }
    void count_poll_fallback() noexcept { ++_poll_fallbacks; }

    // Root tasks still alive (spawned and not finished).
    std::size_t live_tasks() const noexcept { return _roots.size(); }
    // internal: root-task bookkeeping (reactor/join_handle.hh).
    internal::root_list& roots() noexcept { return _roots; }

private:
    explicit executor(const executor_config& cfg);
    // Links a spawned root into the root list and queues it on `q`.
    void start_root(internal::root_task r, task_queue_handle q);
    void run_until(const bool& done);
    bool poll_io();
    bool run_one_slice();
    void park();
    void arm_preempt_timer();
    nanoseconds preempt_period() const noexcept;
    void arm_eventfd_read();
    void arm_latency_poll();
    void drain_for_shutdown();
    // Creates the three io_uring rings and probes their opcodes. `refused`:
    // the failure means io_uring is not allowed or lacks an opcode here
    // (what backend_choice::automatic answers with epoll).
    std::optional<start_error> start_io_uring(const expected<std::size_t>& memlock, bool& refused);

    executor_config _cfg;
    // Before the rings: members are destroyed in reverse, and the rings must
    // go (dropping their registration) before the arena is unmapped.
    std::optional<io_memory> _arena;
    std::unique_ptr<internal::ring> _main;
    std::unique_ptr<internal::ring> _latency;
    std::unique_ptr<internal::ring> _poll;
    int _event_fd = -1;
    bool _epoll = false;
    std::string _fallback_reason;

    std::vector<std::unique_ptr<internal::task_queue>> _queues;
    internal::task_queue* _current = nullptr;
    std::size_t _active_count = 0;
    std::uint64_t _min_vruntime = 0;

    std::vector<work_source*> _sources;
    internal::root_list _roots;  // live root tasks, for shutdown

    // The executor announces "about to sleep" here; a sender that sees it
    // writes the eventfd. Read by other cores: alone on its cache line so
    // their loads do not bounce the executor's hot fields.
    alignas(64) std::atomic<unsigned> _sleeping{0};  // an RMW target: see wake()
    alignas(64) std::atomic<bool> _stop{false};

    // Internal completions.
    struct internal_op : completion {
        executor* self = nullptr;
    };
    internal_op _eventfd_op;
    internal_op _latency_poll_op;
    internal_op _preempt_op;
    std::uint64_t _eventfd_value = 0;
    __kernel_timespec _preempt_ts{};
    bool _eventfd_armed = false;
    // The main ring was just entered with GETEVENTS (park's wait returned,
    // or its spin found work) and nothing ran since: the next poll_io()
    // reaps without entering again.
    bool _main_fresh = false;
    bool _latency_poll_armed = false;
    bool _preempt_armed = false;

    std::uint64_t _parks = 0;
    std::uint64_t _eventfd_wakeups = 0;
    std::uint64_t _stalls = 0;
    std::uint64_t _poll_fallbacks = 0;
};

}  // namespace shardd

#include "reactor/join_handle.hh"

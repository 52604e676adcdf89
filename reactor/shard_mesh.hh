#pragma once
// Cross-shard channels: a bounded SPSC queue from every shard to every other
// (a full mesh, N*(N-1) queues), and submit_to() on top of it.
//
// A message is a function pointer and an argument, run on the receiving
// shard. A sender whose queue is full keeps the message in a local backlog and
// retries on its next loop iteration, so a slow receiver never blocks a
// sender's thread. The receiver is woken through its eventfd only when it has
// announced that it is going to sleep. A sender with a backlog may sleep
// too: it asks the receiver (sender_waiting) to wake it once it has taken
// something from that queue.

#include "reactor/executor.hh"
#include "reactor/spsc_queue.hh"

#include <deque>
#include <functional>
#include <memory>
#include <vector>

namespace shardd {

struct shard_message {
    void (*fn)(void* arg) = nullptr;
    void* arg = nullptr;
};

class shard_mesh {
public:
    // Messages per queue. 1024 * 16 bytes = 16 KiB per pair: room for a burst
    // from a busy shard without the backlog path.
    static constexpr std::size_t default_queue_capacity = 1024;

    shard_mesh(std::size_t shards, std::size_t queue_capacity = default_queue_capacity);
    ~shard_mesh();
    shard_mesh(const shard_mesh&) = delete;
    shard_mesh& operator=(const shard_mesh&) = delete;

    std::size_t size() const noexcept { return _shards; }

    // Called on shard `id`'s thread once its executor exists: registers the
    // inbox with the executor and makes this_shard()/submit_to() work there.
    void attach(unsigned id, executor& ex);

    // Sends `msg` from the calling shard to `to`. Never blocks.
    void send(unsigned to, shard_message msg);

    // Messages that are in a backlog because a queue was full (calling shard).
    std::size_t backlog() const;

    static shard_mesh* current() noexcept;

private:
    class inbox;
    spsc_queue<shard_message>& queue(unsigned from, unsigned to) { return *_queues[from * _shards + to]; }
    bool flush_backlog(unsigned from);
    bool drain_inbox(unsigned to);
    bool inbox_has_work(unsigned to);

    // Set by a sender that goes to sleep with a backlog towards `to`; the
    // receiver clears it when it pops from that queue and wakes the sender.
    // Both sides write it, so each flag has its own cache line.
    struct alignas(64) waiting_flag {
        std::atomic<unsigned> value{0};
    };

    std::size_t _shards;
    std::vector<std::unique_ptr<spsc_queue<shard_message>>> _queues;  // [from * n + to], null on the diagonal
    std::unique_ptr<waiting_flag[]> _sender_waiting;                  // [from * n + to]
    std::vector<executor*> _executors;
    std::vector<std::unique_ptr<inbox>> _inboxes;
    // backlog[from][to], touched only by shard `from`.
    std::vector<std::vector<std::deque<shard_message>>> _backlog;
};

// The calling thread's shard number (0 outside a shard).
unsigned this_shard_id() noexcept;
// The number of shards in the calling thread's mesh (1 outside a mesh).
std::size_t shard_count() noexcept;

namespace internal {

template <typename F>
struct submit_call {
    using raw_result = std::invoke_result_t<F&>;
    template <typename X>
    struct unwrap {
        using type = X;
        static constexpr bool is_task = false;
    };
    template <typename X>
    struct unwrap<task<X>> {
        using type = X;
        static constexpr bool is_task = true;
    };
    using result = typename unwrap<raw_result>::type;
    static constexpr bool is_task = unwrap<raw_result>::is_task;
    using storage = std::conditional_t<std::is_void_v<result>, bool, result>;

    explicit submit_call(F f) : fn(std::move(f)) {}

    F fn;
    std::optional<storage> value;
    std::exception_ptr error;
    std::coroutine_handle<> waiter;
    task_queue* waiter_queue = nullptr;
    executor* origin = nullptr;
    unsigned origin_shard = 0;
    unsigned target_shard = 0;

    // On the origin shard: resume the awaiting coroutine.
    static void reply(void* arg) {
        auto* self = static_cast<submit_call*>(arg);
        self->origin->schedule(self->waiter, self->waiter_queue);
    }
    static void send_reply(submit_call* self) {
        if (self->origin_shard == this_shard_id()) {
            reply(self);  // submitted to ourselves
        } else {
            shard_mesh::current()->send(self->origin_shard, {&reply, self});
        }
    }
    static task<void> run_task(submit_call* self) {
        try {
            if constexpr (std::is_void_v<result>) {
                co_await self->fn();
                self->value.emplace(true);
            } else {
                self->value.emplace(co_await self->fn());
            }
        } catch (...) {
            self->error = std::current_exception();
        }
        send_reply(self);
    }
    // On the target shard.
    static void run(void* arg) {
        auto* self = static_cast<submit_call*>(arg);
        if constexpr (is_task) {
            executor* ex = executor::current();
            (void)ex->spawn(run_task(self));
        } else {
            try {
                if constexpr (std::is_void_v<result>) {
                    self->fn();
                    self->value.emplace(true);
                } else {
                    self->value.emplace(self->fn());
                }
            } catch (...) {
                self->error = std::current_exception();
            }
            send_reply(self);
        }
    }
};

}  // namespace internal

// Runs `fn` on shard `shard` and returns its result to the caller:
//   int n = co_await submit_to(1, [] { return count_connections(); });
// `fn` may return a task<T>, which then runs as a task on that shard.
// Submitting to the calling shard itself runs `fn` there all the same,
// through the executor, never inline.
template <typename F>
auto submit_to(unsigned shard, F fn) {
    using call = internal::submit_call<F>;
    struct awaiter {
        std::unique_ptr<call> c;
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> h) {
            executor* ex = executor::current();
            c->waiter = h;
            c->waiter_queue = ex->current_queue();
            c->origin = ex;
            c->origin_shard = this_shard_id();
            if (c->target_shard == c->origin_shard) {
                (void)ex->spawn([](call* self) -> task<void> {
                    if constexpr (call::is_task) {
                        co_await call::run_task(self);
                    } else {
                        call::run(self);
                    }
                }(c.get()));
                return;
            }
            shard_mesh::current()->send(c->target_shard, {&call::run, c.get()});
        }
        typename call::result await_resume() {
            if (c->error) {
                std::rethrow_exception(c->error);
            }
            if constexpr (!std::is_void_v<typename call::result>) {
                return std::move(*c->value);
            }
        }
    };
    auto c = std::make_unique<call>(std::move(fn));
    c->target_shard = shard;
    return awaiter{std::move(c)};
}

}  // namespace shardd

#pragma once
// spawn() and join_handle<T>: a task run as a root of its own, and the means
// to wait for its result. Included by executor.hh.

#include "reactor/executor.hh"

#include <memory>

namespace shardd {

namespace internal {

// Logs an exception that ended a task nobody awaited (a detached task, or
// one whose join_handle was dropped): it must not vanish unseen.
void report_unobserved(const std::exception_ptr& error) noexcept;

struct join_state_base {
    std::exception_ptr error;
    bool observed = false;  // an awaiter (or run()) took the result
    bool done = false;
    std::coroutine_handle<> waiter;
    task_queue* waiter_queue = nullptr;
    join_state_base() = default;
    join_state_base(const join_state_base&) = delete;
    join_state_base& operator=(const join_state_base&) = delete;
    ~join_state_base() {
        if (error && !observed) {
            report_unobserved(error);
        }
    }
};

template <typename T>
struct join_state : join_state_base {
    std::optional<T> value;
};

template <>
struct join_state<void> : join_state_base {};

// The coroutine that drives a spawned task. It starts suspended (the
// executor resumes it from the queue) and, when done, unlinks itself from
// the executor's root list and frees its own frame.
struct root_task {
    struct promise_type : pooled {
        executor* exec = nullptr;
        root_node node;
        root_task get_return_object() noexcept {
            return root_task{std::coroutine_handle<promise_type>::from_promise(*this)};
        }
        std::suspend_always initial_suspend() noexcept { return {}; }
        struct final_awaiter {
            bool await_ready() noexcept { return false; }
            void await_suspend(std::coroutine_handle<promise_type> h) noexcept {
                h.promise().exec->roots().erase(&h.promise().node);
                h.destroy();
            }
            void await_resume() noexcept {}
        };
        final_awaiter final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        // drive() catches everything; nothing can get here.
        void unhandled_exception() noexcept { std::terminate(); }
    };
    std::coroutine_handle<promise_type> handle;
};

template <typename T>
root_task drive(task<T> t, std::shared_ptr<join_state<T>> st, executor* ex) {
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(t);
        } else {
            st->value.emplace(co_await std::move(t));
        }
    } catch (...) {
        st->error = std::current_exception();
    }
    st->done = true;
    if (st->waiter) {
        ex->schedule(std::exchange(st->waiter, {}), st->waiter_queue);
    }
}

// A root that nobody joins: no join state to allocate (48 bytes a
// connection, issue 13), and an exception is reported at once.
inline root_task drive_detached(task<void> t) {
    try {
        co_await std::move(t);
    } catch (...) {
        report_unobserved(std::current_exception());
    }
}

}  // namespace internal

template <typename T>
class [[nodiscard]] join_handle {
public:
    join_handle() = default;
    explicit join_handle(std::shared_ptr<internal::join_state<T>> st) : _st(std::move(st)) {}

    bool done() const noexcept { return _st && _st->done; }

    // Waits for the task; returns its value or rethrows its exception. One
    // awaiter per handle.
    auto operator co_await() const noexcept {
        struct awaiter {
            internal::join_state<T>* st;
            bool await_ready() const noexcept { return st->done; }
            void await_suspend(std::coroutine_handle<> h) noexcept {
                st->waiter = h;
                st->waiter_queue = executor::current()->current_queue();
            }
            T await_resume() {
                st->observed = true;
                if (st->error) {
                    std::rethrow_exception(st->error);
                }
                if constexpr (!std::is_void_v<T>) {
                    return std::move(*st->value);
                }
            }
        };
        return awaiter{_st.get()};
    }

private:
    std::shared_ptr<internal::join_state<T>> _st;
    friend class executor;
};

inline void executor::start_root(internal::root_task r, task_queue_handle q) {
    auto& p = r.handle.promise();
    p.exec = this;
    p.node.handle = r.handle;
    _roots.push(&p.node);
    schedule(r.handle, _queues.at(q.index).get());
}

template <typename T>
join_handle<T> executor::spawn(task_queue_handle q, task<T> t) {
    auto st = std::make_shared<internal::join_state<T>>();
    start_root(internal::drive<T>(std::move(t), st, this), q);
    return join_handle<T>(std::move(st));
}

inline void executor::spawn_detached(task<void> t) {
    start_root(internal::drive_detached(std::move(t)), current_queue_handle());
}

template <typename T>
T executor::run(task<T> main) {
    auto h = spawn(default_queue(), std::move(main));
    run_until(h._st->done);
    if (!h._st->done) {
        // Stopped before main finished.
        throw std::runtime_error("executor " + _cfg.name + " stopped before its main task finished");
    }
    h._st->observed = true;
    if (h._st->error) {
        std::rethrow_exception(h._st->error);
    }
    if constexpr (!std::is_void_v<T>) {
        return std::move(*h._st->value);
    }
}

}  // namespace shardd

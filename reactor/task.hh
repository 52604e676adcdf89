#pragma once
// task<T>: a lazily started coroutine that one other coroutine awaits.
//
//   task<int> answer() { co_return 42; }
//   task<> caller() { int v = co_await answer(); }
//
// Awaiting a task starts it and transfers control symmetrically (no stack
// growth across long await chains); its completion resumes the awaiter the
// same way. A task that is never awaited never runs. To run one on its own,
// hand it to executor::spawn(), which returns a join_handle.

#include "reactor/frame_pool.hh"

#include <cassert>
#include <coroutine>
#include <exception>
#include <optional>
#include <utility>

namespace shardd {

template <typename T = void>
class task;

namespace internal {

// Frames come from the thread's frame_pool (reactor/frame_pool.hh).
struct task_promise_base : pooled {
    std::coroutine_handle<> continuation = std::noop_coroutine();
    std::exception_ptr error;

    std::suspend_always initial_suspend() noexcept { return {}; }
    struct final_awaiter {
        bool await_ready() noexcept { return false; }
        template <typename P>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
            return h.promise().continuation;
        }
        void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void unhandled_exception() noexcept { error = std::current_exception(); }
};

template <typename T>
struct task_promise : task_promise_base {
    std::optional<T> value;
    task<T> get_return_object() noexcept;
    template <typename U>
    void return_value(U&& v) {
        value.emplace(std::forward<U>(v));
    }
    T take() {
        if (error) {
            std::rethrow_exception(error);
        }
        return std::move(*value);
    }
};

template <>
struct task_promise<void> : task_promise_base {
    task<void> get_return_object() noexcept;
    void return_void() noexcept {}
    void take() {
        if (error) {
            std::rethrow_exception(error);
        }
    }
};

}  // namespace internal

template <typename T>
class [[nodiscard]] task {
public:
    using promise_type = internal::task_promise<T>;
    using handle = std::coroutine_handle<promise_type>;

    task() = default;
    explicit task(handle h) noexcept : _h(h) {}
    task(task&& o) noexcept : _h(std::exchange(o._h, {})) {}
    task& operator=(task&& o) noexcept {
        if (this != &o) {
            destroy();
            _h = std::exchange(o._h, {});
        }
        return *this;
    }
    ~task() { destroy(); }

    bool valid() const noexcept { return bool(_h); }

    auto operator co_await() && noexcept {
        struct awaiter {
            handle h;
            bool await_ready() noexcept { return false; }
            std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
                h.promise().continuation = awaiting;
                return h;
            }
            T await_resume() { return h.promise().take(); }
        };
        assert(_h);
        return awaiter{_h};
    }

private:
    void destroy() noexcept {
        if (_h) {
            _h.destroy();
            _h = {};
        }
    }
    handle _h;
};

namespace internal {
template <typename T>
task<T> task_promise<T>::get_return_object() noexcept {
    return task<T>(std::coroutine_handle<task_promise<T>>::from_promise(*this));
}
inline task<void> task_promise<void>::get_return_object() noexcept {
    return task<void>(std::coroutine_handle<task_promise<void>>::from_promise(*this));
}
}  // namespace internal

}  // namespace shardd

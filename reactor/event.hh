#pragma once
// A one-shard event: tasks wait until someone sets it. Not thread-safe: the
// setter and the waiters run on the same executor (cross-shard signalling
// goes through shard_mesh or an eventfd).
//
//   event drained;
//   co_await drained.wait();   // elsewhere: drained.set();

#include "reactor/executor.hh"

#include <coroutine>
#include <vector>

namespace shardd {

class event {
public:
    bool is_set() const noexcept { return _set; }
    // Wakes every waiter; later wait()s return at once until reset().
    void set() {
        _set = true;
        for (auto& w : std::exchange(_waiters, {})) {
            w.exec->schedule(w.h, w.queue);
        }
    }
    void reset() noexcept { _set = false; }

    struct wait_op {
        event* e;
        bool await_ready() const noexcept { return e->_set; }
        void await_suspend(std::coroutine_handle<> h) {
            executor* ex = executor::current();
            e->_waiters.push_back({h, ex, ex->current_queue()});
        }
        void await_resume() const noexcept {}
    };
    wait_op wait() noexcept { return {this}; }

private:
    struct waiter {
        std::coroutine_handle<> h;
        executor* exec;
        internal::task_queue* queue;
    };
    bool _set = false;
    std::vector<waiter> _waiters;
};

}  // namespace shardd

#pragma once
// A one-shard event: tasks wait until someone sets it. Not thread-safe: the
// setter and the waiters run on the same executor (cross-shard signalling
// goes through shard_mesh or an eventfd).
//
//   event drained;
//   co_await drained.wait();          // elsewhere: drained.set();
//   if (!co_await drained.wait(&stop)) { /* aborted */ }

#include "reactor/abort_source.hh"
#include "reactor/executor.hh"

#include <coroutine>

namespace shardd {

class event {
public:
    event() = default;
    event(const event&) = delete;
    event& operator=(const event&) = delete;

    bool is_set() const noexcept { return _set; }
    // Wakes every waiter; later wait()s return at once until reset().
    void set() {
        _set = true;
        while (wait_op* w = _head) {
            unlink(w);
            w->_abort_sub.unsubscribe();
            w->_exec->schedule(w->_h, w->_queue);
        }
    }
    void reset() noexcept { _set = false; }

    // await_resume(): true when the event was set, false when `abort` fired
    // first.
    class [[nodiscard]] wait_op {
    public:
        wait_op(event& e, abort_source* abort) : _e(e), _abort(abort) {}
        wait_op(const wait_op&) = delete;
        ~wait_op() {
            if (_linked) {
                _e.unlink(this);
            }
        }
        bool await_ready() const noexcept { return _e._set || (_abort && _abort->abort_requested()); }
        void await_suspend(std::coroutine_handle<> h) {
            _exec = executor::current();
            _queue = _exec->current_queue();
            _h = h;
            _e.link(this);
            if (_abort) {
                _abort_sub.subscribe(*_abort, &on_abort, this);
            }
        }
        bool await_resume() const noexcept { return _e._set; }

    private:
        friend class event;
        static void on_abort(void* self) noexcept {
            auto* w = static_cast<wait_op*>(self);
            if (w->_linked) {
                w->_e.unlink(w);
                w->_exec->schedule(w->_h, w->_queue);
            }
        }
        event& _e;
        abort_source* _abort;
        abort_subscription _abort_sub;
        wait_op* _next = nullptr;
        wait_op* _prev = nullptr;
        bool _linked = false;
        std::coroutine_handle<> _h;
        executor* _exec = nullptr;
        internal::task_queue* _queue = nullptr;
    };
    wait_op wait(abort_source* abort = nullptr) noexcept { return wait_op(*this, abort); }

private:
    void link(wait_op* w) noexcept {
        w->_prev = _tail;
        w->_next = nullptr;
        (_tail ? _tail->_next : _head) = w;
        _tail = w;
        w->_linked = true;
    }
    void unlink(wait_op* w) noexcept {
        (w->_prev ? w->_prev->_next : _head) = w->_next;
        (w->_next ? w->_next->_prev : _tail) = w->_prev;
        w->_prev = w->_next = nullptr;
        w->_linked = false;
    }
    bool _set = false;
    wait_op* _head = nullptr;
    wait_op* _tail = nullptr;
};

}  // namespace shardd

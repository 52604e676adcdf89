#pragma once
// abort_source: the one way to cancel what a task, or a group of tasks such
// as one connection's, is waiting for.
//
// Every wait of the reactor can take one: io operations
// (`op.with_abort(as)`), timers (`sleep_for(d, as)`), receive and accept
// streams, buffer_ring::available(), event::wait(). request_abort() makes
// each current wait end with errc::operation_canceled (a timer with false),
// and every later one end at once: an abort sticks, so a loop that sleeps
// again after it woke cannot miss it. An io operation that is in the kernel
// is cancelled there and its waiter resumes only on the final CQE, so the
// memory the kernel was given is the caller's again when the wait ends.
//
//   abort_source stop;
//   auto n = co_await recv_some(fd, buf, len).with_abort(stop);   // task A
//   stop.request_abort();                                         // task B
//
// Single-threaded, like the executor it is used on. request_abort() is for
// tasks: it may submit cancellations, which completion callbacks must not do.

#include <cstddef>

namespace shardd {

class abort_source;

// A wait's registration with an abort_source: intrusive, so subscribing
// allocates nothing. It lives in the waiting object (an operation, a timer)
// and unsubscribes itself when destroyed.
class abort_subscription {
public:
    using callback = void (*)(void* context) noexcept;

    abort_subscription() = default;
    abort_subscription(const abort_subscription&) = delete;
    abort_subscription& operator=(const abort_subscription&) = delete;
    ~abort_subscription() { unsubscribe(); }

    // Registers `fn(context)` to run on request_abort(). Returns false, and
    // registers nothing, when the abort was requested already.
    bool subscribe(abort_source& src, callback fn, void* context) noexcept;
    void unsubscribe() noexcept;
    bool subscribed() const noexcept { return _src != nullptr; }

private:
    friend class abort_source;
    abort_source* _src = nullptr;
    abort_subscription* _prev = nullptr;
    abort_subscription* _next = nullptr;
    callback _fn = nullptr;
    void* _context = nullptr;
};

class abort_source {
public:
    abort_source() = default;
    abort_source(const abort_source&) = delete;
    abort_source& operator=(const abort_source&) = delete;
    ~abort_source();

    bool abort_requested() const noexcept { return _requested; }

    // Idempotent. Runs each subscriber's callback once, oldest first; a
    // subscription is removed before its callback runs.
    void request_abort() noexcept;

    // Subscribed waits, for tests and stats.
    std::size_t subscribers() const noexcept { return _count; }

private:
    friend class abort_subscription;
    abort_subscription* _head = nullptr;
    abort_subscription* _tail = nullptr;
    std::size_t _count = 0;
    bool _requested = false;
};

inline bool abort_subscription::subscribe(abort_source& src, callback fn, void* context) noexcept {
    unsubscribe();
    if (src._requested) {
        return false;
    }
    _src = &src;
    _fn = fn;
    _context = context;
    _prev = src._tail;
    _next = nullptr;
    (src._tail ? src._tail->_next : src._head) = this;
    src._tail = this;
    ++src._count;
    return true;
}

inline void abort_subscription::unsubscribe() noexcept {
    if (!_src) {
        return;
    }
    (_prev ? _prev->_next : _src->_head) = _next;
    (_next ? _next->_prev : _src->_tail) = _prev;
    --_src->_count;
    _src = nullptr;
    _prev = _next = nullptr;
}

inline abort_source::~abort_source() {
    // Waits that outlive their source (a bug, but not ours to crash on) are
    // simply forgotten.
    while (_head) {
        _head->unsubscribe();
    }
}

inline void abort_source::request_abort() noexcept {
    _requested = true;
    while (_head) {
        abort_subscription* s = _head;
        auto fn = s->_fn;
        void* context = s->_context;
        s->unsubscribe();
        fn(context);
    }
}

}  // namespace shardd

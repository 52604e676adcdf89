#pragma once
// What accept_stream and recv_stream share: the life cycle of one multishot
// operation, as an explicit state machine, and the one waiter it may have.
//
//   phase    idle ──arm()──> armed ──cancel──> stopping
//              ^               │                  │
//              └──final CQE────┴──────────────────┘
//
//   idle      nothing in the kernel; next() arms (unless finished)
//   armed     the operation is in the kernel and posts CQEs
//   stopping  a cancel is on its way; the final CQE ends it
//
// finished (stop(), or the abort_source fired): never armed again; next()
// drains what arrived, then says operation_canceled. orphaned: the stream
// object is gone while the kernel still held the operation; the state frees
// itself on the final CQE.
//
// Completion callbacks only record: what needs an SQE (re-arming after a
// pause that ended while next() waits, a cancel the stream asks of itself)
// goes through the ring's deferred actions, run by the executor loop.
//
// Heap-allocated, so that the kernel's user_data stays valid after the
// stream object is gone.

#include "reactor/abort_source.hh"
#include "reactor/executor.hh"
#include "reactor/frame_pool.hh"

#include <coroutine>
#include <cstdint>

namespace shardd::internal {

// pooled: one per connection, allocated and freed with it.
class stream_core : public completion, public deferred_action, public pooled {
public:
    enum class phase : std::uint8_t { idle, armed, stopping };

    stream_core(ring& on, int fd, abort_source* abort) noexcept;
    stream_core(const stream_core&) = delete;
    stream_core& operator=(const stream_core&) = delete;

    phase state() const noexcept { return _phase; }
    bool finished() const noexcept { return _finished; }
    bool aborted() const noexcept { return _abort && _abort->abort_requested(); }

    // The awaitable parts of next(): ready when something arrived or nothing
    // more can; otherwise (re-)arms and waits.
    bool next_ready();
    void next_suspend(std::coroutine_handle<> h);
    void next_resumed() noexcept;

    // pause(): cancels the operation if it is in the kernel; stop(): the
    // same, for good. Either way settled() is true once the kernel has let
    // go of it (its final CQE).
    void pause();
    void stop();
    bool settled() const noexcept { return _phase == phase::idle; }
    void settle_suspend(std::coroutine_handle<> h);
    void settle_resumed() noexcept { _waiter = {}; }

    // The stream object is going away.
    void retire() noexcept;

protected:
    virtual ~stream_core() = default;
    // Queues the operation's SQE (on_cqe is the completion callback).
    virtual void prep(io_uring_sqe* sqe) = 0;
    virtual bool has_ready() const noexcept = 0;
    // Hands back what arrived and was never taken (buffers, descriptors).
    virtual void release_ready() noexcept = 0;

    // For the derived callback, around its own bookkeeping: whether this is
    // the final CQE of the operation, and whether it ended a cancel.
    struct cqe_kind {
        bool final;
        bool ended_cancel;
    };
    cqe_kind begin_cqe(std::uint32_t flags) noexcept;
    // After the derived callback recorded the CQE (or swallowed it): wake
    // the waiter, defer a re-arm, or free an orphan.
    void end_cqe() noexcept;
    // From a callback: stop the operation (a cancel), through the loop.
    void defer_pause() noexcept;
    // From a callback: arm again through the loop, if next() still waits.
    void defer_rearm() noexcept { _on->defer(this); }

    void arm();
    void submit_cancel();
    void finish();

    ring* _on;
    executor* _exec;
    int _fd;
    std::uint64_t _pauses = 0;
    bool _orphaned = false;

private:
    static void on_abort(void* self) noexcept;
    static void on_deferred(deferred_action* a, bool discard) noexcept;
    void free_if_done() noexcept;

    phase _phase = phase::idle;
    bool _finished = false;
    bool _pause_wanted = false;
    bool _waiting_for_data = false;
    abort_source* _abort;
    abort_subscription _abort_sub;
    std::coroutine_handle<> _waiter;
    task_queue* _queue = nullptr;
};

// The awaitables of next() (State: recv_state or accept_state, whose take()
// turns the oldest record into the stream's result) and of pause()/stop().
template <typename State>
struct [[nodiscard]] stream_next_op {
    State* s;
    bool await_ready() { return s->next_ready(); }
    void await_suspend(std::coroutine_handle<> h) { s->next_suspend(h); }
    auto await_resume() {
        s->next_resumed();
        return s->take();
    }
};

struct [[nodiscard]] stream_settle_op {
    stream_core* s;
    bool await_ready() const noexcept { return s->settled(); }
    void await_suspend(std::coroutine_handle<> h) { s->settle_suspend(h); }
    void await_resume() noexcept { s->settle_resumed(); }
};

}  // namespace shardd::internal

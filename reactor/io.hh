#pragma once
// Awaitable io_uring operations.
//
// Each operation is an awaitable object that lives in the awaiting
// coroutine's frame; its address is the SQE's user_data until the final CQE.
// await_resume() gives expected<uint32_t>: the CQE's non-negative result, or
// the negative errno as an error_code.
//
//   auto n = co_await read(fd, buf, len, offset);
//   auto r = co_await with_timeout(read(fd, buf, len, 0), 10ms);  // errc::timed_out
//   co_await sleep_for(5ms);
//   auto r = co_await recv_some(fd, buf, len).with_abort(stop);   // errc::operation_canceled

#include "reactor/abort_source.hh"
#include "reactor/executor.hh"

#include <chrono>
#include <cstdint>

namespace shardd {

namespace internal {

__kernel_timespec to_kernel_timespec(nanoseconds d) noexcept;

struct op_state : completion {
    int result = 0;
    std::uint32_t cqe_flags = 0;
    int outstanding = 0;  // CQEs still to come: 2 with a linked timeout
    int timeout_result = 0;
    std::coroutine_handle<> waiter;
    task_queue* queue = nullptr;
    executor* exec = nullptr;
    ring* on = nullptr;

    struct timeout_part : completion {
        op_state* owner = nullptr;
    } timeout_c;
    __kernel_timespec ts{};
    // While the operation is in the kernel: its abort_source, if any.
    abort_subscription abort_sub;

    static void on_cqe(completion* c, int res, std::uint32_t flags) noexcept;
    static void on_timeout_cqe(completion* c, int res, std::uint32_t flags) noexcept;
    // abort_source callback: asks the kernel to cancel the operation; the
    // waiter resumes on its final CQE (-ECANCELED, or its result if it won).
    static void on_abort(void* self) noexcept;
    void finish_one() noexcept;
};

}  // namespace internal

// An operation: `prep` fills the SQE (io_uring_prep_*), `ring` is where it
// goes. Use the factory functions below rather than this directly.
template <typename Prep>
class [[nodiscard]] io_op : internal::op_state {
public:
    io_op(internal::ring* r, Prep prep) : _prep(std::move(prep)) { on = r; }
    io_op(const io_op&) = delete;
    io_op(io_op&& o) noexcept
        : internal::op_state(), _prep(std::move(o._prep)), _timeout(o._timeout), _abort(o._abort) {
        on = o.on;
    }

    // Fails the operation with errc::timed_out if it has not completed in
    // `d` (IORING_OP_LINK_TIMEOUT: the kernel cancels it).
    io_op&& with_timeout(nanoseconds d) && {
        _timeout = d;
        return std::move(*this);
    }
    // Ends the wait with errc::operation_canceled when `as` is aborted,
    // before the operation starts (it is then never submitted) or while it
    // is in the kernel (it is cancelled there).
    io_op&& with_abort(abort_source& as) && {
        _abort = &as;
        return std::move(*this);
    }

    bool await_ready() noexcept {
        if (_abort && _abort->abort_requested()) {
            result = -ECANCELED;
            return true;
        }
        return false;
    }
    void await_suspend(std::coroutine_handle<> h) {
        exec = executor::current();
        waiter = h;
        queue = exec->current_queue();
        fn = &internal::op_state::on_cqe;
        io_uring_sqe* sqe = on->get_sqe(_timeout ? 2 : 1);
        _prep(sqe);
        on->track(sqe, this);
        outstanding = 1;
        if (_timeout) {
            sqe->flags |= IOSQE_IO_LINK;
            ts = internal::to_kernel_timespec(*_timeout);
            timeout_c.owner = this;
            timeout_c.fn = &internal::op_state::on_timeout_cqe;
            io_uring_sqe* t = on->get_sqe();
            io_uring_prep_link_timeout(t, &ts, 0);
            on->track(t, &timeout_c);
            outstanding = 2;
        }
        if (_abort) {
            abort_sub.subscribe(*_abort, &internal::op_state::on_abort, static_cast<internal::op_state*>(this));
        }
    }
    expected<std::uint32_t> await_resume() const noexcept {
        if (result >= 0) {
            return static_cast<std::uint32_t>(result);
        }
        if (_timeout && result == -ECANCELED && timeout_result == -ETIME) {
            return unexpected{std::make_error_code(std::errc::timed_out)};
        }
        return unexpected{errno_code(result)};
    }
    std::uint32_t cqe_flags_of() const noexcept { return cqe_flags; }

private:
    Prep _prep;
    std::optional<nanoseconds> _timeout;
    abort_source* _abort = nullptr;
};

template <typename Prep>
io_op(internal::ring*, Prep) -> io_op<Prep>;

template <typename Op>
auto with_timeout(Op&& op, nanoseconds d) {
    return std::forward<Op>(op).with_timeout(d);
}

// A no-op round trip through the main ring.
inline auto nop() {
    return io_op(&executor::current()->main_ring(), [](io_uring_sqe* sqe) { io_uring_prep_nop(sqe); });
}

inline auto read(int fd, void* buf, std::uint32_t len, std::uint64_t offset) {
    return io_op(&executor::current()->main_ring(),
                 [=](io_uring_sqe* sqe) { io_uring_prep_read(sqe, fd, buf, len, offset); });
}

inline auto write(int fd, const void* buf, std::uint32_t len, std::uint64_t offset) {
    return io_op(&executor::current()->main_ring(),
                 [=](io_uring_sqe* sqe) { io_uring_prep_write(sqe, fd, buf, len, offset); });
}

// O_DIRECT file I/O. Goes to the poll ring (IORING_SETUP_IOPOLL: completions
// reaped by polling the device, no interrupt), and to the main ring when the
// device cannot poll (EOPNOTSUPP: no poll queues, or a filesystem that does
// not support it), counted in executor::poll_fallbacks(). `buf`, `len` and
// `offset` must meet O_DIRECT's alignment (the logical block size; 4096 is
// always safe).
task<expected<std::uint32_t>> read_dma(int fd, void* buf, std::uint32_t len, std::uint64_t offset);
task<expected<std::uint32_t>> write_dma(int fd, const void* buf, std::uint32_t len, std::uint64_t offset);

// Waits until `fd` reports one of `events` (POLLIN, ...); returns the mask.
inline auto poll_fd(int fd, unsigned events) {
    return io_op(&executor::current()->ring_for_current(),
                 [=](io_uring_sqe* sqe) { io_uring_prep_poll_add(sqe, fd, events); });
}

// Timers. A latency-class task's timers go to the latency ring, so that their
// expiry preempts throughput work.
class [[nodiscard]] sleep_op {
public:
    // Relative, or absolute on CLOCK_MONOTONIC; `abort` ends it early.
    sleep_op(nanoseconds d, bool absolute, abort_source* abort = nullptr) : _d(d), _absolute(absolute), _abort(abort) {}
    sleep_op(const sleep_op&) = delete;

    bool await_ready() const noexcept {
        return _cancelled || (_abort && _abort->abort_requested()) || (!_absolute && _d.count() <= 0);
    }
    void await_suspend(std::coroutine_handle<> h);
    // True when the sleep ran its course; false when it was cancelled or
    // aborted, whenever that happened: before it started, while it ran, or
    // after it expired but before the sleeper resumed.
    bool await_resume() noexcept;

    // Cancels the sleep: the sleeper resumes with false (at once if it
    // sleeps; an await that has not started yet returns false at once).
    void cancel();

private:
    static void on_abort(void* self) noexcept;
    internal::op_state _state;
    nanoseconds _d;
    bool _absolute;
    bool _cancelled = false;
    abort_source* _abort;
};

inline sleep_op sleep_for(nanoseconds d) { return sleep_op(d, false); }
inline sleep_op sleep_for(nanoseconds d, abort_source& abort) { return sleep_op(d, false, &abort); }
// `deadline` on CLOCK_MONOTONIC (std::chrono::steady_clock on Linux).
inline sleep_op sleep_until(std::chrono::steady_clock::time_point deadline) {
    return sleep_op(deadline.time_since_epoch(), true);
}
inline sleep_op sleep_until(std::chrono::steady_clock::time_point deadline, abort_source& abort) {
    return sleep_op(deadline.time_since_epoch(), true, &abort);
}

// Yields the CPU when need_preempt() says latency work is waiting (or
// always, for yield()). The task goes to the back of its queue.
struct [[nodiscard]] yield_op {
    bool force;
    bool await_ready() const { return !force && !executor::current()->should_yield(); }
    void await_suspend(std::coroutine_handle<> h) const {
        executor* ex = executor::current();
        ex->schedule(h, ex->current_queue());
    }
    void await_resume() const noexcept {}
};
inline yield_op yield_if_needed() { return {false}; }
inline yield_op yield() { return {true}; }

}  // namespace shardd

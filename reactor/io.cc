#include "reactor/io.hh"

namespace shardd {

namespace internal {

__kernel_timespec to_kernel_timespec(nanoseconds d) noexcept {
    __kernel_timespec ts{};
    ts.tv_sec = d.count() / 1'000'000'000;
    ts.tv_nsec = d.count() % 1'000'000'000;
    return ts;
}

void op_state::finish_one() noexcept {
    if (--outstanding == 0) {
        abort_sub.unsubscribe();
        if (waiter) {
            exec->schedule(std::exchange(waiter, {}), queue);
        }
    }
}

void op_state::on_abort(void* self) noexcept {
    auto* op = static_cast<op_state*>(self);
    if (op->outstanding == 0) {
        return;
    }
    // By user_data: the operation itself. A linked timeout goes with it.
    io_uring_sqe* sqe = op->on->get_sqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<std::uint64_t>(static_cast<completion*>(op)), 0);
    op->on->track(sqe, nullptr);
}

void op_state::on_cqe(completion* c, int res, std::uint32_t flags) noexcept {
    auto* op = static_cast<op_state*>(c);
    op->result = res;
    op->cqe_flags = flags;
    op->finish_one();
}

void op_state::on_timeout_cqe(completion* c, int res, std::uint32_t) noexcept {
    auto* op = static_cast<timeout_part*>(c)->owner;
    op->timeout_result = res;
    op->finish_one();
}

}  // namespace internal

namespace {

template <typename Prep>
task<expected<std::uint32_t>> dma(Prep prep) {
    executor* ex = executor::current();
    auto r = co_await io_op(&ex->poll_ring(), prep);
    if (!r && r.error() == std::errc::operation_not_supported) {
        ex->count_poll_fallback();
        r = co_await io_op(&ex->main_ring(), prep);
    }
    co_return r;
}

}  // namespace

task<expected<std::uint32_t>> read_dma(int fd, void* buf, std::uint32_t len, std::uint64_t offset) {
    return dma([=](io_uring_sqe* sqe) { io_uring_prep_read(sqe, fd, buf, len, offset); });
}

task<expected<std::uint32_t>> write_dma(int fd, const void* buf, std::uint32_t len, std::uint64_t offset) {
    return dma([=](io_uring_sqe* sqe) { io_uring_prep_write(sqe, fd, buf, len, offset); });
}

void sleep_op::await_suspend(std::coroutine_handle<> h) {
    executor* ex = executor::current();
    _state.exec = ex;
    _state.waiter = h;
    _state.queue = ex->current_queue();
    _state.on = &ex->ring_for_current();
    _state.fn = &internal::op_state::on_cqe;
    _state.ts = internal::to_kernel_timespec(_d);
    io_uring_sqe* sqe = _state.on->get_sqe();
    io_uring_prep_timeout(sqe, &_state.ts, 0, _absolute ? IORING_TIMEOUT_ABS : 0);
    _state.on->track(sqe, &_state);
    _state.outstanding = 1;
    if (_abort) {
        _state.abort_sub.subscribe(*_abort, &sleep_op::on_abort, this);
    }
}

bool sleep_op::await_resume() noexcept {
    if (_cancelled || (_abort && _abort->abort_requested())) {
        return false;
    }
    return (!_absolute && _d.count() <= 0) || _state.result == -ETIME;
}

void sleep_op::on_abort(void* self) noexcept { static_cast<sleep_op*>(self)->cancel(); }

void sleep_op::cancel() {
    if (_cancelled) {
        return;
    }
    _cancelled = true;
    if (_state.outstanding == 0 || _state.on == nullptr) {
        return;  // not started, or its CQE is in: await_resume says false
    }
    io_uring_sqe* sqe = _state.on->get_sqe();
    io_uring_prep_timeout_remove(sqe, reinterpret_cast<std::uint64_t>(static_cast<completion*>(&_state)), 0);
    _state.on->track(sqe, nullptr);
}

}  // namespace shardd

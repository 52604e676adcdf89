#include "reactor/internal/stream_core.hh"

namespace shardd::internal {

stream_core::stream_core(ring& on, int fd, abort_source* abort) noexcept
    : _on(&on), _exec(executor::current()), _fd(fd), _abort(abort) {
    deferred_action::fn = &on_deferred;
}

void stream_core::arm() {
    io_uring_sqe* sqe = _on->get_sqe();
    prep(sqe);
    _on->track(sqe, this);
    _phase = phase::armed;
}

void stream_core::submit_cancel() {
    io_uring_sqe* sqe = _on->get_sqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<std::uint64_t>(static_cast<completion*>(this)), 0);
    _on->track(sqe, nullptr);
    _phase = phase::stopping;
}

void stream_core::finish() {
    _finished = true;
    if (_phase == phase::armed) {
        submit_cancel();
    }
}

bool stream_core::next_ready() {
    if (aborted()) {
        // Ends at once, with what already arrived left unread (retire()
        // hands it back): an aborted connection has no use for it.
        finish();
        return _phase == phase::idle;
    }
    if (has_ready()) {
        return true;
    }
    if (_finished) {
        return _phase == phase::idle;
    }
    if (_phase == phase::idle) {
        arm();
    }
    // armed: wait for a CQE; stopping (a pause): wait for its end, then the
    // callback has the loop arm again.
    return false;
}

void stream_core::next_suspend(std::coroutine_handle<> h) {
    _exec = executor::current();
    _waiter = h;
    _queue = _exec->current_queue();
    _waiting_for_data = true;
    if (_abort) {
        _abort_sub.subscribe(*_abort, &on_abort, this);
    }
}

void stream_core::next_resumed() noexcept {
    _abort_sub.unsubscribe();
    _waiter = {};
    _waiting_for_data = false;
}

void stream_core::pause() {
    if (!_finished && _phase == phase::armed) {
        submit_cancel();
    }
}

void stream_core::stop() { finish(); }

void stream_core::settle_suspend(std::coroutine_handle<> h) {
    _exec = executor::current();
    _waiter = h;
    _queue = _exec->current_queue();
    _waiting_for_data = false;
}

void stream_core::on_abort(void* self) noexcept {
    auto* s = static_cast<stream_core*>(self);
    s->finish();
    if (s->_phase == phase::idle && s->_waiter) {
        s->_exec->schedule(std::exchange(s->_waiter, {}), s->_queue);
    }
}

stream_core::cqe_kind stream_core::begin_cqe(std::uint32_t flags) noexcept {
    cqe_kind k{!(flags & IORING_CQE_F_MORE), _phase == phase::stopping};
    if (k.final) {
        _phase = phase::idle;
    }
    return k;
}

void stream_core::end_cqe() noexcept {
    if (_orphaned) {
        release_ready();
        free_if_done();
        return;
    }
    if (!_waiter) {
        return;
    }
    if (!_waiting_for_data) {
        if (_phase == phase::idle) {
            _exec->schedule(std::exchange(_waiter, {}), _queue);
        }
        return;
    }
    if (has_ready() || (_phase == phase::idle && _finished)) {
        _exec->schedule(std::exchange(_waiter, {}), _queue);
    } else if (_phase == phase::idle) {
        // A pause (or a kernel that refused an option) ended while next()
        // waits: carry on receiving.
        defer_rearm();
    }
}

void stream_core::defer_pause() noexcept {
    _pause_wanted = true;
    _on->defer(this);
}

void stream_core::on_deferred(deferred_action* a, bool discard) noexcept {
    auto* s = static_cast<stream_core*>(a);
    const bool pause_wanted = std::exchange(s->_pause_wanted, false);
    if (s->_orphaned || discard) {
        s->free_if_done();
        return;
    }
    if (pause_wanted) {
        if (s->_phase == phase::armed) {
            ++s->_pauses;
            s->submit_cancel();
        }
        return;
    }
    if (s->_phase == phase::idle && !s->_finished && s->_waiter && s->_waiting_for_data && !s->has_ready()) {
        s->arm();
    }
}

void stream_core::free_if_done() noexcept {
    if (_orphaned && _phase == phase::idle && !deferred_action::queued) {
        delete this;
    }
}

void stream_core::retire() noexcept {
    release_ready();
    _abort_sub.unsubscribe();
    _waiter = {};
    _orphaned = true;
    if (_phase == phase::armed) {
        submit_cancel();
    }
    free_if_done();
}

}  // namespace shardd::internal

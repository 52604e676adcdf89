#include "reactor/recv_stream.hh"

#include <algorithm>
#include <atomic>
#include <cerrno>

namespace shardd {

namespace internal {

namespace {
// Whether the kernel takes a byte limit for multishot receives. Learnt once
// per process from the first -EINVAL; every shard reads it.
std::atomic<bool> multishot_limit_supported{true};
}  // namespace

recv_state::recv_state(int fd, buffer_ring& b, abort_source* abort) : stream_core(b.ring(), fd, abort), buffers(&b) {
    completion::fn = &on_cqe;
}

void recv_state::prep(io_uring_sqe* sqe) {
    if (_pull) {
        // One buffer, then the consumer asks again: nothing is taken from
        // the socket that the consumer did not ask for.
        io_uring_prep_recv(sqe, _fd, nullptr, 0, 0);
        _limited = false;
    } else {
        io_uring_prep_recv_multishot(sqe, _fd, nullptr, 0, 0);
        _limited = unread_limit != std::numeric_limits<std::size_t>::max() &&
                   multishot_limit_supported.load(std::memory_order_relaxed);
        if (_limited) {
            // The kernel ends the multishot once this many bytes came in
            // (sqe->optlen, which shares its place with file_index in
            // liburing 2.3's struct): backpressure without a race.
            sqe->file_index = static_cast<std::uint32_t>(std::clamp<std::size_t>(unread_limit, 1, UINT32_MAX));
        }
    }
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = buffers->group();
}

void recv_state::pause_receive() {
    if (state() == phase::armed && !multishot_limit_supported.load(std::memory_order_relaxed)) {
        _pull = true;
    }
    if (state() == phase::idle) {
        // A paused stream takes no buffer, and with nothing in the kernel no
        // completion will pass the wake token on (an armed receive's cancel
        // does): pass it on now, or the next waiter waits on a reader that
        // may not receive again for a long time (a spliced relay).
        return_wake_token();
    }
    pause();
}

void recv_state::release_ready() noexcept {
    return_wake_token();
    for (std::size_t i = 0; i < _ready.size(); ++i) {
        const record& r = _ready[i];
        if (r.res > 0 && (r.flags & IORING_CQE_F_BUFFER)) {
            buffers->release(static_cast<std::uint16_t>(r.flags >> IORING_CQE_BUFFER_SHIFT));
        }
    }
    _ready.clear();
    ready_bytes = 0;
    ready_buffers = 0;
}

void recv_state::on_cqe(completion* c, int res, std::uint32_t flags) noexcept {
    auto* s = static_cast<recv_state*>(c);
    const cqe_kind k = s->begin_cqe(flags);
    if (s->_limited && res == -EINVAL && k.final) {
        // A kernel without the multishot byte limit: do without it from now
        // on (the stream pauses itself instead, less tightly). end_cqe()
        // has the loop arm again if next() waits.
        multishot_limit_supported.store(false, std::memory_order_relaxed);
        s->_limited = false;
        s->end_cqe();
        return;
    }
    if (s->_pull && res >= 0 && static_cast<std::size_t>(res) < s->buffers->buffer_size()) {
        s->_pull = false;  // a short read: the socket's queue is empty
    }
    const bool took_buffer = res > 0 && (flags & IORING_CQE_F_BUFFER);
    if (took_buffer) {
        s->buffers->taken();
        s->ready_bytes += static_cast<std::size_t>(res);
        ++s->ready_buffers;
    } else if (res == -ENOBUFS) {
        s->buffers->count_exhausted();
    }
    if (s->wake_token) {
        // The buffer it was woken for: used, or the next waiter's turn.
        s->wake_token = false;
        if (took_buffer) {
            s->buffers->token_spent();
        } else {
            s->buffers->token_returned();
        }
    }
    // A cancel's -ECANCELED is the end of a pause or a stop, not news for
    // the reader: next() re-arms or says operation_canceled by itself.
    if (!(k.ended_cancel && res == -ECANCELED)) {
        s->_ready.push_back({res, flags});
    }
    if (!s->_limited && !k.final && s->ready_bytes > s->unread_limit && !s->_orphaned) {
        // No kernel limit: over the reader's limit, stop, then pull.
        s->_pull = true;
        s->defer_pause();
    }
    s->end_cqe();
}

expected<received> recv_state::take() {
    if (!has_ready() || aborted()) {
        return unexpected{std::make_error_code(std::errc::operation_canceled)};
    }
    const record r = _ready.pop_front();
    if (r.res < 0) {
        return unexpected{errno_code(r.res)};
    }
    if (r.res == 0) {
        return received{};
    }
    const auto bid = static_cast<std::uint16_t>(r.flags >> IORING_CQE_BUFFER_SHIFT);
    ready_bytes -= static_cast<std::size_t>(r.res);
    --ready_buffers;
    return received{buffers->data(bid, static_cast<std::size_t>(r.res)), bid};
}

}  // namespace internal

void recv_stream::use_multishot_limit(bool use) noexcept {
    internal::multishot_limit_supported.store(use, std::memory_order_relaxed);
}

recv_stream::recv_stream(int fd, buffer_ring& buffers, abort_source* abort)
    : _s(new internal::recv_state(fd, buffers, abort)) {}

}  // namespace shardd

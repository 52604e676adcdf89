#include "reactor/internal/epoll_ring.hh"

#include "reactor/internal/epoll_engine.hh"

#include <bit>
#include <cassert>
#include <cstring>

namespace shardd::internal {

expected<epoll_ring::set> epoll_ring::create_set(unsigned entries) {
    auto engine = epoll_engine::create();
    if (!engine) {
        return unexpected{engine.error()};
    }
    const unsigned n = std::bit_ceil(std::max(entries, 1u));
    set s;
    s.main.reset(new epoll_ring(ring_kind::main, n, *engine));
    s.latency.reset(new epoll_ring(ring_kind::latency, n, *engine));
    s.poll.reset(new epoll_ring(ring_kind::poll, n, *engine));
    return s;
}

epoll_ring::epoll_ring(ring_kind kind, unsigned entries, std::shared_ptr<epoll_engine> engine)
    : ring(kind), _engine(std::move(engine)), _sq(entries), _sq_mask(entries - 1), _cq(std::size_t{entries} * 4) {
    _cq_head = &_cq_head_value;
    _cq_tail = &_cq_tail_value;
    _engine->attach(this);
}

epoll_ring::~epoll_ring() { _engine->detach(this); }

int epoll_ring::fd() const noexcept { return _engine->fd(); }

io_uring_sqe* epoll_ring::get_sqe(unsigned need) {
    assert(!_reaping && "a completion callback took an SQE: defer() it instead");
    if (entries() - pending_submissions() < need) {
        run_sqes();
    }
    io_uring_sqe* sqe = &_sq[_sq_tail++ & _sq_mask];
    std::memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

unsigned epoll_ring::run_sqes() {
    unsigned n = 0;
    while (_sq_head != _sq_tail) {
        const io_uring_sqe& sqe = _sq[_sq_head++ & _sq_mask];
        const io_uring_sqe* link = nullptr;
        if ((sqe.flags & IOSQE_IO_LINK) && _sq_head != _sq_tail &&
            _sq[_sq_head & _sq_mask].opcode == IORING_OP_LINK_TIMEOUT) {
            link = &_sq[_sq_head++ & _sq_mask];
            ++n;
        }
        _engine->start(*this, sqe, link);
        ++n;
    }
    return n;
}

void epoll_ring::post(std::uint64_t user_data, std::int32_t res, std::uint32_t flags) {
    if (_cq_tail_value - _cq_head_value == _cq.size()) {
        // Full: double it, oldest first. io_uring would keep the overflow
        // on a kernel list (IORING_FEAT_NODROP); this is that list.
        std::vector<cqe_record> bigger(_cq.size() * 2);
        for (unsigned i = 0; i < _cq.size(); ++i) {
            bigger[i] = _cq[(_cq_head_value + i) & (_cq.size() - 1)];
        }
        _cq_tail_value = static_cast<unsigned>(_cq.size());
        _cq_head_value = 0;
        _cq.swap(bigger);
    }
    _cq[_cq_tail_value & (_cq.size() - 1)] = cqe_record{user_data, res, flags};
    ++_cq_tail_value;
}

int epoll_ring::submit() { return static_cast<int>(run_sqes()); }

int epoll_ring::submit_and_wait() {
    for (;;) {
        _engine->run_all_sqes();
        if (_engine->any_cqe()) {
            return 0;
        }
        ++_enters;
        if (const int rc = _engine->harvest(_engine->wait_timeout()); rc < 0) {
            return rc;
        }
    }
}

unsigned epoll_ring::poll(bool fresh) {
    // One epoll_wait per loop iteration, for every ring: the latency ring's
    // poll() comes first in the executor's loop, so it collects. Every
    // ring's SQEs run first, so that what completes at once is posted before
    // what readiness and timers complete, as an io_uring_enter posts inline
    // completions before it runs task work.
    if (_kind == ring_kind::latency && !fresh) {
        _engine->run_all_sqes();
        ++_enters;
        _engine->harvest(0);
    } else {
        run_sqes();
    }
    return reap();
}

unsigned epoll_ring::reap() {
    unsigned count = 0;
    while (_cq_head_value != _cq_tail_value) {
        const cqe_record r = _cq[_cq_head_value & (_cq.size() - 1)];
        ++_cq_head_value;
        if (!(r.flags & IORING_CQE_F_MORE)) {
            --_in_flight;
        }
        ++count;
        ++_cqes_reaped;
        if (auto* c = reinterpret_cast<completion*>(r.user_data)) {
            _reaping = true;
            c->fn(c, r.res, r.flags);
            _reaping = false;
        }
    }
    return count;
}

void epoll_ring::wait_for_completion(std::chrono::nanoseconds d) {
    ++_enters;
    _engine->harvest(d.count());
}

std::error_code epoll_ring::register_buffer_ring(io_uring_buf_ring* br, unsigned entries, std::uint16_t group) {
    return _engine->register_buffers(br, entries, group);
}

void epoll_ring::unregister_buffer_ring(std::uint16_t group) noexcept { _engine->unregister_buffers(group); }

void epoll_ring::cancel_fd(int fd) noexcept {
    run_deferred();
    run_sqes();
    _engine->cancel_fd(fd);
}

void epoll_ring::forget_fd(int fd) noexcept { _engine->forget_fd(fd); }

}  // namespace shardd::internal

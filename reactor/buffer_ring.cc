#include "reactor/buffer_ring.hh"

#include "reactor/executor.hh"
#include "reactor/io_memory.hh"

#include <algorithm>
#include <cerrno>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

namespace shardd {

namespace {
constexpr unsigned max_buffer_ring_entries = 32768;
}  // namespace

expected<std::unique_ptr<buffer_ring>> buffer_ring::create(internal::ring& on, std::uint16_t group, unsigned count,
                                                           std::size_t size) {
    if (count == 0 || count > max_buffer_ring_entries || (count & (count - 1)) != 0 || size == 0 || size > UINT32_MAX) {
        return unexpected{std::make_error_code(std::errc::invalid_argument)};
    }
    std::unique_ptr<buffer_ring> br(new buffer_ring(on, group, count, size));
    // The ring of descriptors must be page aligned: mmap gives that.
    br->_ring_bytes = count * sizeof(io_uring_buf);
    void* ring_mem = mmap(nullptr, br->_ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring_mem == MAP_FAILED) {
        return unexpected{errno_code(errno)};
    }
    br->_br = static_cast<io_uring_buf_ring*>(ring_mem);
    br->_buffer_bytes = count * size;
    // MAP_POPULATE: the kernel hands buffers out in ring order, so over time
    // every buffer is touched even when few are in use at once. Faulting them
    // in now makes the pool's memory visible (RSS) from the start instead of
    // creeping up under load, and keeps page faults off the receive path.
    void* buf_mem =
        mmap(nullptr, br->_buffer_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buf_mem == MAP_FAILED) {
        return unexpected{errno_code(errno)};
    }
    br->_buffers = static_cast<std::byte*>(buf_mem);

    if (auto ec = on.register_buffer_ring(br->_br, count, group)) {
        return unexpected{ec};
    }
    br->_registered = true;
    io_uring_buf_ring_init(br->_br);
    br->_target = std::min(count, initial_target);
    // Buffer 0 on top of the stack: the first ones in are the lowest.
    br->_spare.reserve(count);
    for (unsigned i = count; i-- > 0;) {
        br->_spare.push_back(static_cast<std::uint16_t>(i));
    }
    br->refill();
    return br;
}

std::string buffer_ring::describe_error(std::error_code ec, unsigned count) {
    if (ec != std::errc::not_enough_memory) {
        return ec.message();
    }
    const long page = sysconf(_SC_PAGESIZE);
    const std::size_t page_bytes = page > 0 ? static_cast<std::size_t>(page) : 4096;
    const std::size_t locked = (std::size_t{count} * sizeof(io_uring_buf) + page_bytes - 1) / page_bytes * page_bytes;
    rlimit lim{};
    const std::string limit = getrlimit(RLIMIT_MEMLOCK, &lim) != 0 ? std::string("unknown")
                              : lim.rlim_cur == RLIM_INFINITY      ? std::string("unlimited")
                                                                   : memlock_kib(lim.rlim_cur);
    return ec.message() + ": its " + memlock_kib(locked) + " of descriptors did not fit in RLIMIT_MEMLOCK (" + limit +
           " for all shards together and every other process of this user, which without CAP_IPC_LOCK also holds "
           "their io_uring rings); " +
           memlock_raise_hint + ", or run fewer shards";
}

buffer_ring::~buffer_ring() {
    if (_registered) {
        _on.unregister_buffer_ring(_group);
    }
    if (_buffers) {
        munmap(_buffers, _buffer_bytes);
    }
    if (_br) {
        munmap(_br, _ring_bytes);
    }
}

void buffer_ring::add_at(std::uint16_t bid, unsigned offset) noexcept {
    io_uring_buf_ring_add(_br, _buffers + static_cast<std::size_t>(bid) * _size, static_cast<unsigned>(_size), bid,
                          io_uring_buf_ring_mask(_count), static_cast<int>(offset));
}

void buffer_ring::advance(unsigned n) noexcept {
    io_uring_buf_ring_advance(_br, static_cast<int>(n));
    _in_ring += n;
}

void buffer_ring::count_exhausted() noexcept {
    ++_exhausted;
    _taken_since_exhausted = 0;
    if (!_spare.empty() && _target < _count) {
        _target = std::min(_count, _target * 2);
        refill();
    }
}

void buffer_ring::shrink_target() noexcept {
    _taken_since_exhausted = 0;
    _target = std::max(std::min(_count, initial_target), _target / 2);
}

void buffer_ring::unlink(available_op* w) noexcept {
    (w->_prev ? w->_prev->_next : _waiters_head) = w->_next;
    (w->_next ? w->_next->_prev : _waiters_tail) = w->_prev;
    w->_prev = w->_next = nullptr;
    w->_queued = false;
    --_waiter_count;
}

void buffer_ring::wake_one() noexcept {
    available_op* w = _waiters_head;
    unlink(w);
    w->_abort_sub.unsubscribe();
    w->_woken = true;
    ++_waking;
    w->_exec->schedule(w->_h, w->_queue);
}

buffer_ring::available_op::~available_op() {
    if (_queued) {
        _br.unlink(this);
    }
    if (_woken) {
        _br.token_returned();  // woken, never resumed
    }
}

bool buffer_ring::available_op::await_ready() const noexcept {
    if (_abort && _abort->abort_requested()) {
        return true;
    }
    // Nobody waits ahead of us, and a buffer is free that no woken waiter
    // is about to take.
    return _br._waiters_head == nullptr && _br.free_buffers() > _br._waking;
}

void buffer_ring::available_op::await_suspend(std::coroutine_handle<> h) {
    _exec = executor::current();
    _queue = _exec->current_queue();
    _h = h;
    _prev = _br._waiters_tail;
    _next = nullptr;
    (_br._waiters_tail ? _br._waiters_tail->_next : _br._waiters_head) = this;
    _br._waiters_tail = this;
    _queued = true;
    ++_br._waiter_count;
    if (_abort) {
        _abort_sub.subscribe(*_abort, &on_abort, this);
    }
}

bool buffer_ring::available_op::await_resume() noexcept {
    const bool aborted = _abort && _abort->abort_requested();
    if (std::exchange(_woken, false)) {
        if (_keep_token && !aborted) {
            _token = true;
        } else {
            _br.token_returned();
        }
    }
    return !aborted;
}

void buffer_ring::available_op::on_abort(void* self) noexcept {
    auto* w = static_cast<available_op*>(self);
    if (w->_queued) {
        w->_br.unlink(w);
        w->_exec->schedule(w->_h, w->_queue);
    }
}

}  // namespace shardd

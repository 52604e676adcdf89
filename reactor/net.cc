#include "reactor/net.hh"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

namespace shardd {

namespace {

std::error_code set_int_option(int fd, int level, int name, int value) {
    if (setsockopt(fd, level, name, &value, sizeof(value)) != 0) {
        return errno_code(errno);
    }
    return {};
}

}  // namespace

expected<int> listen_socket(const socket_address& addr, const listen_options& opts) {
    const int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) {
        return unexpected{errno_code(errno)};
    }
    auto fail = [fd](std::error_code ec) {
        ::close(fd);
        return unexpected{ec};
    };
    if (auto ec = set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1)) {
        return fail(ec);
    }
    if (opts.reuse_port) {
        if (auto ec = set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1)) {
            return fail(ec);
        }
    }
    if (addr.family() == AF_INET6) {
        if (auto ec = set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, opts.v6_only ? 1 : 0)) {
            return fail(ec);
        }
    }
    if (::bind(fd, addr.get(), addr.length()) != 0) {
        return fail(errno_code(errno));
    }
    if (::listen(fd, opts.backlog) != 0) {
        return fail(errno_code(errno));
    }
    return fd;
}

expected<int> tcp_socket(int family) {
    const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) {
        return unexpected{errno_code(errno)};
    }
    return fd;
}

expected<socket_address> local_address(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        return unexpected{errno_code(errno)};
    }
    return socket_address(reinterpret_cast<sockaddr*>(&ss), len);
}

std::error_code set_nodelay(int fd, bool on) { return set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0); }

namespace internal {

namespace {
// Whether the kernel takes a byte limit for multishot receives. Learnt once
// per process from the first -EINVAL; every shard reads it.
std::atomic<bool> multishot_limit_supported{true};
}  // namespace

void multishot_state::arm() {
    io_uring_sqe* sqe = on->get_sqe();
    if (what == op::accept) {
        io_uring_prep_multishot_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
    } else {
        if (pull) {
            // One buffer, then the consumer asks again: nothing is taken
            // from the socket that the consumer did not ask for.
            io_uring_prep_recv(sqe, fd, nullptr, 0, 0);
        } else {
            io_uring_prep_recv_multishot(sqe, fd, nullptr, 0, 0);
            limited = unread_limit != std::numeric_limits<std::size_t>::max() &&
                      multishot_limit_supported.load(std::memory_order_relaxed);
            if (limited) {
                // The kernel ends the multishot once this many bytes came
                // in (sqe->optlen, which shares its place with file_index
                // in liburing 2.3's struct): backpressure without a race.
                sqe->file_index = static_cast<std::uint32_t>(std::clamp<std::size_t>(unread_limit, 1, UINT32_MAX));
            }
        }
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = buffers->group();
    }
    fn = &on_cqe;
    on->track(sqe, this);
    armed = true;
}

void multishot_state::cancel() {
    if (cancelled) {
        return;
    }
    cancelled = true;
    if (armed) {
        io_uring_sqe* sqe = on->get_sqe();
        io_uring_prep_cancel64(sqe, reinterpret_cast<std::uint64_t>(static_cast<completion*>(this)), 0);
        on->track(sqe, nullptr);
    }
    if (waiter && !armed) {
        exec->schedule(std::exchange(waiter, {}), queue);
    }
}

void multishot_state::pause() {
    if (cancelled || paused) {
        return;
    }
    paused = true;
    pull = what == op::recv;
    ++pauses;
    if (armed && !pausing) {
        pausing = true;
        io_uring_sqe* sqe = on->get_sqe();
        io_uring_prep_cancel64(sqe, reinterpret_cast<std::uint64_t>(static_cast<completion*>(this)), 0);
        on->track(sqe, nullptr);
    }
}

void multishot_state::release_ready() {
    for (auto [res, flags] : ready) {
        if (what == op::recv && res > 0 && (flags & IORING_CQE_F_BUFFER)) {
            ready_bytes -= static_cast<std::size_t>(res);
            buffers->release(static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT));
        } else if (what == op::accept && res >= 0) {
            ::close(res);
        }
    }
    ready.clear();
}

void multishot_state::on_cqe(completion* c, int res, std::uint32_t flags) noexcept {
    auto* s = static_cast<multishot_state*>(c);
    if (!(flags & IORING_CQE_F_MORE)) {
        s->armed = false;
    }
    if (s->limited && res == -EINVAL && !s->armed) {
        // A kernel without the multishot byte limit: do without it from
        // now on (pause() still holds the bound, less tightly).
        multishot_limit_supported.store(false, std::memory_order_relaxed);
        s->limited = false;
        if (s->waiter && !s->cancelled && !s->orphaned) {
            s->arm();
        }
        return;
    }
    if (s->what == op::recv && s->pull && res >= 0 && static_cast<std::size_t>(res) < s->buffers->buffer_size()) {
        s->pull = false;  // a short read: the socket's queue is empty
    }
    if (s->what == op::recv && res > 0 && (flags & IORING_CQE_F_BUFFER)) {
        s->buffers->taken();
        s->ready_bytes += static_cast<std::size_t>(res);
        if (s->ready_bytes > s->unread_limit && !s->orphaned) {
            s->pause();
        }
    }
    if (s->what == op::recv && res == -ENOBUFS) {
        s->buffers->count_exhausted();
    }
    if (s->pausing && !s->armed) {
        s->pausing = false;
        if (res == -ECANCELED && !s->cancelled && !s->orphaned) {
            // The end of a pause. If next() was called meanwhile (it cleared
            // `paused`) and waits, carry on receiving.
            if (!s->paused && s->waiter && !s->exec->stop_requested()) {
                s->arm();
            }
            return;
        }
    }
    s->ready.emplace_back(res, flags);
    if (s->orphaned) {
        s->release_ready();
        if (!s->armed) {
            delete s;
        }
        return;
    }
    if (s->waiter) {
        s->exec->schedule(std::exchange(s->waiter, {}), s->queue);
    }
}

void retire(multishot_state* s) noexcept {
    s->release_ready();
    if (s->armed) {
        s->cancel();
        s->orphaned = true;  // frees itself on the final CQE
        s->waiter = {};
    } else {
        delete s;
    }
}

// Shared by both streams: ready when something is queued or nothing more can
// come; otherwise (re-)arm and wait.
bool stream_ready(multishot_state* s) {
    if (!s->ready.empty()) {
        return true;
    }
    if (s->cancelled) {
        return !s->armed;
    }
    s->paused = false;
    if (!s->armed) {
        s->arm();
    }
    return false;
}

void stream_suspend(multishot_state* s, std::coroutine_handle<> h) {
    s->exec = executor::current();
    s->waiter = h;
    s->queue = s->exec->current_queue();
}

expected<int> accepted_fd(multishot_state*, int res, std::uint32_t) { return res; }

expected<received> received_chunk(multishot_state* s, int res, std::uint32_t flags) {
    if (res == 0) {
        return received{};
    }
    const auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    s->ready_bytes -= static_cast<std::size_t>(res);
    return received{s->buffers->data(bid, static_cast<std::size_t>(res)), bid};
}

namespace {

multishot_state* new_state(multishot_state::op what, ring& on, int fd, buffer_ring* buffers) {
    auto* s = new multishot_state;
    s->what = what;
    s->exec = executor::current();
    s->on = &on;
    s->fd = fd;
    s->buffers = buffers;
    return s;
}

}  // namespace

}  // namespace internal

accept_stream::accept_stream(int listen_fd)
    : multishot_stream(internal::new_state(internal::multishot_state::op::accept, executor::current()->latency_ring(),
                                           listen_fd, nullptr)) {}

recv_stream::recv_stream(int fd, buffer_ring& buffers)
    : multishot_stream(internal::new_state(internal::multishot_state::op::recv, buffers.ring(), fd, &buffers)) {}

task<expected<std::size_t>> send_all(int fd, std::span<const std::byte> data) {
    std::size_t sent = 0;
    while (sent < data.size()) {
        const auto chunk = static_cast<std::uint32_t>(std::min<std::size_t>(data.size() - sent, UINT32_MAX));
        auto n = co_await send_some(fd, data.data() + sent, chunk);
        if (!n) {
            co_return unexpected{n.error()};
        }
        sent += *n;
    }
    co_return sent;
}

task<std::error_code> connect(int fd, socket_address addr) {
    auto r = co_await io_op(&executor::current()->main_ring(), [fd, &addr](io_uring_sqe* sqe) {
        io_uring_prep_connect(sqe, fd, addr.get(), addr.length());
    });
    co_return r ? std::error_code{} : r.error();
}

task<std::error_code> close_socket(int fd) {
    executor* ex = executor::current();
    for (internal::ring* r : {&ex->latency_ring(), &ex->main_ring()}) {
        // -ENOENT (nothing pending) is the common, fine answer.
        co_await io_op(r, [fd](io_uring_sqe* sqe) { io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL); });
    }
    auto r = co_await io_op(&ex->main_ring(), [fd](io_uring_sqe* sqe) { io_uring_prep_close(sqe, fd); });
    co_return r ? std::error_code{} : r.error();
}

}  // namespace shardd

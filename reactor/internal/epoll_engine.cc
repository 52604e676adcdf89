#include "reactor/internal/epoll_engine.hh"

#include "reactor/internal/epoll_ring.hh"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <ctime>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

namespace shardd::internal {

namespace {

// Receives per descriptor and edge before the others get their turn: 16
// full buffers (512 KiB of the default 32 KiB ones) is as much as io_uring's
// multishot receive takes in one go (MULTISHOT_MAX_RETRY, 32, of what fits)
// and keeps one fast sender from starving a shard's other connections. A
// descriptor cut short this way runs again at the next epoll_wait.
constexpr int recv_batch = 16;
// Connections accepted per listener and edge, for the same reason (Linux's
// accept queue hands them out one per accept4).
constexpr int accept_batch = 64;
// Events per epoll_wait: as bench/epoll_echo's textbook loop takes; more
// ready descriptors stay in epoll's ready list for the next call.
constexpr int max_events = 256;
constexpr std::size_t ops_per_chunk = 256;

std::uint64_t now_ns() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t timespec_ns(const __kernel_timespec* ts) noexcept {
    if (ts == nullptr || ts->tv_sec < 0) {
        return 0;
    }
    return static_cast<std::uint64_t>(ts->tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts->tv_nsec);
}

int ring_index(ring_kind k) noexcept { return static_cast<int>(k); }

bool is_multishot(const io_uring_sqe& sqe) noexcept {
    switch (sqe.opcode) {
    case IORING_OP_RECV: return sqe.ioprio & IORING_RECV_MULTISHOT;
    case IORING_OP_ACCEPT: return sqe.ioprio & IORING_ACCEPT_MULTISHOT;
    default: return false;
    }
}

}  // namespace

expected<std::shared_ptr<epoll_engine>> epoll_engine::create() {
    std::shared_ptr<epoll_engine> e(new epoll_engine());
    e->_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->_epfd < 0) {
        return unexpected{errno_code(errno)};
    }
    return e;
}

epoll_engine::~epoll_engine() {
    if (_epfd >= 0) {
        ::close(_epfd);
    }
}

void epoll_engine::attach(epoll_ring* r) noexcept { _rings[ring_index(r->kind())] = r; }

void epoll_engine::detach(epoll_ring* r) noexcept {
    drop_ring(*r);
    _rings[ring_index(r->kind())] = nullptr;
}

epoll_engine::fd_state& epoll_engine::state(int fd) {
    if (static_cast<std::size_t>(fd) >= _fds.size()) {
        _fds.resize(std::max<std::size_t>(static_cast<std::size_t>(fd) + 1, _fds.size() * 2));
    }
    return _fds[static_cast<std::size_t>(fd)];
}

epoll_op* epoll_engine::alloc_op(epoll_ring& r, const io_uring_sqe& sqe) {
    if (_free_ops == nullptr) {
        auto chunk = std::make_unique<epoll_op[]>(ops_per_chunk);
        for (std::size_t i = 0; i < ops_per_chunk; ++i) {
            chunk[i].free_next = _free_ops;
            _free_ops = &chunk[i];
        }
        _op_chunks.push_back(std::move(chunk));
    }
    epoll_op* op = _free_ops;
    _free_ops = op->free_next;
    *op = epoll_op{};
    op->sqe = sqe;
    op->owner = &r;
    return op;
}

void epoll_engine::free_op(epoll_op* op) noexcept {
    op->free_next = _free_ops;
    _free_ops = op;
}

// --- submission ------------------------------------------------------------

void epoll_engine::start(epoll_ring& r, const io_uring_sqe& sqe, const io_uring_sqe* link_timeout) {
    switch (sqe.opcode) {
    case IORING_OP_NOP: r.post(sqe.user_data, 0, 0); break;
    case IORING_OP_ASYNC_CANCEL: run_cancel(r, sqe); break;
    case IORING_OP_TIMEOUT_REMOVE: run_timeout_remove(r, sqe); break;
    case IORING_OP_TIMEOUT: start_timeout(alloc_op(r, sqe), false); break;
    case IORING_OP_POLL_ADD: {
        if (sqe.fd < 0) {
            r.post(sqe.user_data, -EBADF, 0);
            break;
        }
        epoll_op* op = alloc_op(r, sqe);
        if (start_poll(op) && link_timeout) {
            link_timer(r, op, *link_timeout);
            return;
        }
        break;
    }
    case IORING_OP_RECV:
    case IORING_OP_SEND:
    case IORING_OP_SENDMSG:
    case IORING_OP_ACCEPT:
    case IORING_OP_CONNECT:
    case IORING_OP_READ:
    case IORING_OP_WRITE: {
        if (sqe.fd < 0) {
            r.post(sqe.user_data, -EBADF, 0);
            break;
        }
        epoll_op* op = alloc_op(r, sqe);
        const bool in = sqe.opcode == IORING_OP_RECV || sqe.opcode == IORING_OP_ACCEPT || sqe.opcode == IORING_OP_READ;
        fd_state& st = state(sqe.fd);
        // Known not readable (an EAGAIN or a short read since the last
        // edge): a receive or accept waits without the system call that
        // would only say so again. Sends are always tried: one with
        // MSG_DONTWAIT must answer now, and most succeed.
        const bool known_blocked = st.registered && (sqe.opcode == IORING_OP_RECV || sqe.opcode == IORING_OP_ACCEPT) &&
                                   !st.readable && !st.hup;
        const outcome o = known_blocked ? outcome::blocked : attempt(op);
        if (o == outcome::finished) {
            if (link_timeout) {
                r.post(link_timeout->user_data, -ECANCELED, 0);
            }
            return;
        }
        if (link_timeout) {
            link_timer(r, op, *link_timeout);
        }
        wait(op, in ? list_in : list_out, o);
        return;
    }
    default: r.post(sqe.user_data, -EINVAL, 0); break;
    }
    // A linked timeout after an operation that cannot wait (or failed to
    // start): io_uring cancels it at once.
    if (link_timeout) {
        r.post(link_timeout->user_data, -ECANCELED, 0);
    }
}

void epoll_engine::link_timer(epoll_ring& r, epoll_op* op, const io_uring_sqe& link_timeout) {
    epoll_op* t = alloc_op(r, link_timeout);
    t->link = op;
    op->link = t;
    start_timeout(t, true);
}

void epoll_engine::run_all_sqes() {
    for (epoll_ring* r : _rings) {
        if (r) {
            r->run_sqes();
        }
    }
}

bool epoll_engine::any_cqe() const noexcept {
    for (const epoll_ring* r : _rings) {
        if (r && !r->cq_empty()) {
            return true;
        }
    }
    return false;
}

bool epoll_engine::ensure_registered(int fd, fd_state& st) {
    if (st.registered) {
        return true;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = static_cast<std::uint64_t>(fd);
    bool fresh = true;
    if (epoll_ctl(_epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        if (errno != EEXIST) {
            return false;
        }
        fresh = false;
    }
    // Adding reports the descriptor's present state as an edge, so the
    // bits can start clear: what is ready shows at the next epoll_wait. A
    // file already in the set (its number was forgotten, the file was not
    // closed) gives no such edge: try it once.
    st.registered = true;
    st.readable = !fresh;
    st.writable = !fresh;
    st.hup = false;
    return true;
}

void epoll_engine::wait(epoll_op* op, list_kind list, outcome why) {
    const int fd = op->sqe.fd;
    fd_state& st = state(fd);
    if (!ensure_registered(fd, st)) {
        const int err = errno;
        if (err == EPERM && (op->sqe.opcode == IORING_OP_READ || op->sqe.opcode == IORING_OP_WRITE)) {
            // A regular file or block device: epoll cannot watch it, and its
            // I/O blocks anyway. Run it synchronously, as io_uring's worker
            // threads would.
            attempt_rw(op, true);
            return;
        }
        finish(op, -err);
        return;
    }
    if (why == outcome::blocked) {
        (list == list_in ? st.readable : st.writable) = false;
    }
    op->list = list;
    auto& l = st.lists[list - 1];
    op->prev = l[1];
    op->next = nullptr;
    (l[1] ? l[1]->next : l[0]) = op;
    l[1] = op;
    _waiting[op->sqe.user_data] = op;
    op->in_waiting = true;
    if (why == outcome::yielded && !st.in_retry) {
        st.in_retry = true;
        _retry.push_back(fd);
    }
}

void epoll_engine::unlink(epoll_op* op) noexcept {
    if (op->list != list_none) {
        fd_state& st = _fds[static_cast<std::size_t>(op->sqe.fd)];
        auto& l = st.lists[op->list - 1];
        (op->prev ? op->prev->next : l[0]) = op->next;
        (op->next ? op->next->prev : l[1]) = op->prev;
        op->list = list_none;
        op->prev = op->next = nullptr;
    }
    if (op->heap_index != epoll_op::no_index) {
        timer_remove(op);
    }
    if (op->in_waiting) {
        // Only what waited is in the table: an operation done at submit
        // (most sends) costs no hash lookup.
        op->in_waiting = false;
        if (auto it = _waiting.find(op->sqe.user_data); it != _waiting.end() && it->second == op) {
            _waiting.erase(it);
        }
    }
}

void epoll_engine::finish(epoll_op* op, std::int32_t res, std::uint32_t flags) {
    unlink(op);
    op->owner->post(op->sqe.user_data, res, flags);
    if (epoll_op* t = op->link) {
        // The operation beat its linked timeout.
        t->link = nullptr;
        unlink(t);
        t->owner->post(t->sqe.user_data, -ECANCELED, 0);
        free_op(t);
    }
    free_op(op);
}

// --- the operations ----------------------------------------------------------

epoll_engine::outcome epoll_engine::attempt(epoll_op* op) {
    switch (op->sqe.opcode) {
    case IORING_OP_RECV: return attempt_recv(op, state(op->sqe.fd));
    case IORING_OP_SEND:
    case IORING_OP_SENDMSG: return attempt_send(op);
    case IORING_OP_ACCEPT: return attempt_accept(op);
    case IORING_OP_CONNECT: return attempt_connect(op);
    case IORING_OP_READ:
    case IORING_OP_WRITE: return attempt_rw(op, false);
    default: finish(op, -EINVAL); return outcome::finished;
    }
}

epoll_engine::outcome epoll_engine::attempt_recv(epoll_op* op, fd_state& st) {
    const io_uring_sqe& sqe = op->sqe;
    const bool multishot = is_multishot(sqe);
    const bool select = sqe.flags & IOSQE_BUFFER_SELECT;
    const int flags = static_cast<int>(sqe.msg_flags) | MSG_DONTWAIT;
    // The multishot byte limit (recv_stream.cc: sqe->optlen, file_index in
    // liburing 2.3's struct): the final CQE once that many bytes came in.
    const std::uint64_t limit = multishot ? sqe.file_index : 0;
    for (int i = 0; i < recv_batch; ++i) {
        void* buf = reinterpret_cast<void*>(sqe.addr);
        std::uint32_t len = sqe.len;
        std::uint16_t bid = 0;
        buffer_group* g = nullptr;
        if (select) {
            if (sqe.buf_group >= _groups.size() || _groups[sqe.buf_group].br == nullptr) {
                finish(op, -ENOBUFS);
                return outcome::finished;
            }
            g = &_groups[sqe.buf_group];
            const std::uint16_t tail = io_uring_smp_load_acquire(&g->br->tail);
            if (g->head == tail) {
                // As io_uring: -ENOBUFS when a receive finds no buffer. But
                // after a full buffer, only if data is left (io_uring goes
                // on only while the socket has more, and otherwise waits).
                char probe;
                if (i > 0 && ::recv(sqe.fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT) < 0 && errno == EAGAIN) {
                    return outcome::blocked;
                }
                finish(op, -ENOBUFS);
                return outcome::finished;
            }
            const io_uring_buf& b = g->br->bufs[g->head & g->mask];
            buf = reinterpret_cast<void*>(b.addr);
            len = b.len;
            bid = b.bid;
        }
        if (limit != 0) {
            // As io_uring's limited multishot: no read past the limit.
            len = static_cast<std::uint32_t>(std::min<std::uint64_t>(len, limit - op->done));
        }
        const ssize_t n = ::recv(sqe.fd, buf, len, flags);
        if (n < 0) {
            const int err = errno;
            if (err == EAGAIN) {
                return outcome::blocked;
            }
            if (err == EINTR) {
                continue;
            }
            finish(op, -err);
            return outcome::finished;
        }
        std::uint32_t cqe_flags = 0;
        if (n > 0 && g) {
            // The buffer is consumed only by data; on EOF io_uring leaves it
            // in the ring, and so do we.
            ++g->head;
            cqe_flags = IORING_CQE_F_BUFFER | (static_cast<std::uint32_t>(bid) << IORING_CQE_BUFFER_SHIFT);
        }
        // A read shorter than asked emptied the socket's queue at that
        // moment: whatever comes later is a new edge. Not after the peer's
        // FIN was seen: that edge is spent, and only reading on says EOF.
        const bool drained = static_cast<std::size_t>(n) < len && !st.hup && !(sqe.msg_flags & MSG_PEEK);
        if (n == 0 || !multishot) {
            if (drained && n > 0) {
                st.readable = false;
            }
            finish(op, static_cast<std::int32_t>(n), cqe_flags);
            return outcome::finished;
        }
        op->done += static_cast<std::uint64_t>(n);
        if (limit != 0 && op->done >= limit) {
            finish(op, static_cast<std::int32_t>(n), cqe_flags);
            return outcome::finished;
        }
        op->owner->post(sqe.user_data, static_cast<std::int32_t>(n), cqe_flags | IORING_CQE_F_MORE);
        if (drained) {
            return outcome::blocked;
        }
    }
    return outcome::yielded;
}

epoll_engine::outcome epoll_engine::attempt_send(epoll_op* op) {
    const io_uring_sqe& sqe = op->sqe;
    const bool caller_nowait = sqe.msg_flags & MSG_DONTWAIT;
    const int flags = static_cast<int>(sqe.msg_flags) | MSG_DONTWAIT;
    for (;;) {
        ssize_t n;
        if (sqe.opcode == IORING_OP_SENDMSG) {
            n = ::sendmsg(sqe.fd, reinterpret_cast<const msghdr*>(sqe.addr), flags);
        } else {
            n = ::send(sqe.fd, reinterpret_cast<const char*>(sqe.addr) + op->done, sqe.len - op->done,
                       flags & ~MSG_WAITALL);
        }
        if (n >= 0) {
            op->done += static_cast<std::uint64_t>(n);
            if (sqe.opcode == IORING_OP_SEND && (sqe.msg_flags & MSG_WAITALL) && n > 0 && op->done < sqe.len) {
                continue;
            }
            finish(op, static_cast<std::int32_t>(op->done));
            return outcome::finished;
        }
        const int err = errno;
        if (err == EINTR) {
            continue;
        }
        if (err == EAGAIN && !caller_nowait) {
            return outcome::blocked;
        }
        // MSG_DONTWAIT asked for what fits now: as io_uring, -EAGAIN when
        // nothing did.
        finish(op, op->done > 0 ? static_cast<std::int32_t>(op->done) : -err);
        return outcome::finished;
    }
}

void epoll_engine::set_nonblocking(int fd) {
    fd_state& st = state(fd);
    if (st.nonblocking) {
        return;
    }
    // accept4(2) and connect(2) have no MSG_DONTWAIT: the file itself must be
    // non-blocking. It stays so: every other operation here passes
    // MSG_DONTWAIT or RWF_NOWAIT anyway (and splice_pipes sets the same flag).
    if (const int fl = fcntl(fd, F_GETFL); fl >= 0 && !(fl & O_NONBLOCK)) {
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
    st.nonblocking = true;
}

epoll_engine::outcome epoll_engine::attempt_accept(epoll_op* op) {
    const io_uring_sqe& sqe = op->sqe;
    const bool multishot = is_multishot(sqe);
    set_nonblocking(sqe.fd);
    for (int i = 0; i < accept_batch; ++i) {
        const int fd = ::accept4(sqe.fd, reinterpret_cast<sockaddr*>(sqe.addr), reinterpret_cast<socklen_t*>(sqe.addr2),
                                 static_cast<int>(sqe.accept_flags));
        if (fd < 0) {
            const int err = errno;
            if (err == EAGAIN) {
                return outcome::blocked;
            }
            if (err == EINTR || err == ECONNABORTED) {
                continue;
            }
            // As io_uring: an error ends a multishot accept (EMFILE included;
            // accept_stream arms it again).
            finish(op, -err);
            return outcome::finished;
        }
        forget_fd(fd);
        if (!multishot) {
            finish(op, fd);
            return outcome::finished;
        }
        op->owner->post(sqe.user_data, fd, IORING_CQE_F_MORE);
    }
    return outcome::yielded;
}

epoll_engine::outcome epoll_engine::attempt_connect(epoll_op* op) {
    const io_uring_sqe& sqe = op->sqe;
    if (op->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(sqe.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
            err = errno;
        }
        finish(op, -err);
        return outcome::finished;
    }
    set_nonblocking(sqe.fd);
    if (::connect(sqe.fd, reinterpret_cast<const sockaddr*>(sqe.addr), static_cast<socklen_t>(sqe.off)) == 0) {
        finish(op, 0);
        return outcome::finished;
    }
    const int err = errno;
    if (err == EINPROGRESS || err == EAGAIN || err == EINTR) {
        op->connecting = true;
        return outcome::blocked;
    }
    finish(op, -err);
    return outcome::finished;
}

epoll_engine::outcome epoll_engine::attempt_rw(epoll_op* op, bool blocking) {
    const io_uring_sqe& sqe = op->sqe;
    const bool read = sqe.opcode == IORING_OP_READ;
    iovec iov{reinterpret_cast<void*>(sqe.addr), sqe.len};
    fd_state& st = state(sqe.fd);
    if (!blocking && st.no_nowait) {
        // A file that refuses RWF_NOWAIT (EOPNOTSUPP: an eventfd before
        // Linux 5.12, say) but can be polled: ask it, then do the plain call
        // only when it is ready.
        pollfd p{sqe.fd, static_cast<short>(read ? POLLIN : POLLOUT), 0};
        if (::poll(&p, 1, 0) <= 0) {
            return outcome::blocked;
        }
        blocking = true;
    }
    const int flags = blocking ? 0 : RWF_NOWAIT;
    for (;;) {
        // An offset of -1 is io_uring's "the file position", as for preadv2.
        const auto off = st.stream_file ? off_t{-1} : static_cast<off_t>(sqe.off);
        const ssize_t n = read ? ::preadv2(sqe.fd, &iov, 1, off, flags) : ::pwritev2(sqe.fd, &iov, 1, off, flags);
        if (n >= 0) {
            finish(op, static_cast<std::int32_t>(n));
            return outcome::finished;
        }
        const int err = errno;
        if (err == ESPIPE && !st.stream_file) {
            // eventfd, pipes, sockets: io_uring ignores the offset there.
            // Remembered per descriptor: the executor's eventfd is read
            // after every sleep.
            st.stream_file = true;
            continue;
        }
        if (err == EINTR) {
            continue;
        }
        if (!blocking && (err == EAGAIN || err == EOPNOTSUPP)) {
            // Not ready, or a file that cannot say without blocking: wait()
            // polls the first and runs the second synchronously (or, when it
            // can be polled, as no_nowait above).
            if (err == EOPNOTSUPP) {
                st.no_nowait = true;
            }
            return outcome::blocked;
        }
        finish(op, -err);
        return outcome::finished;
    }
}

bool epoll_engine::start_poll(epoll_op* op) {
    const int fd = op->sqe.fd;
    const std::uint32_t wanted = op->sqe.poll32_events | POLLERR | POLLHUP;
    fd_state& st = state(fd);
    if (st.registered) {
        // Edges already consumed say nothing of now: ask the descriptor.
        pollfd p{fd, static_cast<short>(op->sqe.poll32_events), 0};
        if (::poll(&p, 1, 0) > 0 && (static_cast<std::uint32_t>(p.revents) & wanted)) {
            finish(op, p.revents & static_cast<short>(wanted));
            return false;
        }
    }
    // Registering reports the present state as an edge.
    if (!ensure_registered(fd, st)) {
        finish(op, -errno);
        return false;
    }
    op->list = list_poll;
    auto& l = st.lists[list_poll - 1];
    op->prev = l[1];
    (l[1] ? l[1]->next : l[0]) = op;
    l[1] = op;
    _waiting[op->sqe.user_data] = op;
    op->in_waiting = true;
    return true;
}

// --- timers ------------------------------------------------------------------

void epoll_engine::start_timeout(epoll_op* op, bool link) {
    const io_uring_sqe& sqe = op->sqe;
    if (!link && sqe.off != 0) {
        // A completion-count timeout: the reactor never asks for one.
        finish(op, -EINVAL);
        return;
    }
    const std::uint64_t ts = timespec_ns(reinterpret_cast<const __kernel_timespec*>(sqe.addr));
    op->deadline = (sqe.timeout_flags & IORING_TIMEOUT_ABS) ? ts : now_ns() + ts;
    timer_push(op);
    if (!link) {
        _waiting[sqe.user_data] = op;
        op->in_waiting = true;
    }
}

void epoll_engine::timer_sift(std::vector<epoll_op*>& heap, std::size_t i) noexcept {
    // Up, then down: whichever the changed element needs.
    while (i > 0) {
        const std::size_t parent = (i - 1) / 2;
        if (heap[parent]->deadline <= heap[i]->deadline) {
            break;
        }
        std::swap(heap[parent], heap[i]);
        heap[parent]->heap_index = parent;
        heap[i]->heap_index = i;
        i = parent;
    }
    for (;;) {
        const std::size_t l = 2 * i + 1;
        const std::size_t r = l + 1;
        std::size_t m = i;
        if (l < heap.size() && heap[l]->deadline < heap[m]->deadline) {
            m = l;
        }
        if (r < heap.size() && heap[r]->deadline < heap[m]->deadline) {
            m = r;
        }
        if (m == i) {
            break;
        }
        std::swap(heap[m], heap[i]);
        heap[m]->heap_index = m;
        heap[i]->heap_index = i;
        i = m;
    }
}

void epoll_engine::update_deadline(epoll_ring& r) noexcept {
    r._next_deadline = r._timers.empty() ? ring::no_deadline : r._timers.front()->deadline;
}

void epoll_engine::timer_push(epoll_op* op) {
    auto& heap = op->owner->_timers;
    op->heap_index = heap.size();
    heap.push_back(op);
    timer_sift(heap, op->heap_index);
    update_deadline(*op->owner);
}

void epoll_engine::timer_remove(epoll_op* op) noexcept {
    auto& heap = op->owner->_timers;
    const std::size_t i = op->heap_index;
    op->heap_index = epoll_op::no_index;
    if (i + 1 != heap.size()) {
        heap[i] = heap.back();
        heap[i]->heap_index = i;
        heap.pop_back();
        timer_sift(heap, i);
    } else {
        heap.pop_back();
    }
    update_deadline(*op->owner);
}

void epoll_engine::expire_timers() {
    bool any = false;
    for (epoll_ring* r : _rings) {
        any = any || (r && !r->_timers.empty());
    }
    if (!any) {
        return;
    }
    const std::uint64_t now = now_ns();
    for (epoll_ring* r : _rings) {
        while (r && !r->_timers.empty() && r->_timers.front()->deadline <= now) {
            epoll_op* t = r->_timers.front();
            if (epoll_op* target = t->link) {
                // A linked timeout fired: its operation is cancelled, as
                // io_uring's LINK_TIMEOUT does (-ECANCELED, then -ETIME).
                t->link = nullptr;
                target->link = nullptr;
                finish(target, -ECANCELED);
            }
            finish(t, -ETIME);
        }
    }
}

std::int64_t epoll_engine::wait_timeout() const noexcept {
    if (!_retry.empty()) {
        return 0;
    }
    std::uint64_t earliest = ring::no_deadline;
    for (const epoll_ring* r : _rings) {
        if (r && !r->_timers.empty()) {
            earliest = std::min(earliest, r->_timers.front()->deadline);
        }
    }
    if (earliest == ring::no_deadline) {
        return -1;
    }
    const std::uint64_t now = now_ns();
    return earliest <= now ? 0 : static_cast<std::int64_t>(std::min<std::uint64_t>(earliest - now, INT64_MAX));
}

// --- cancellation ------------------------------------------------------------

void epoll_engine::run_cancel(epoll_ring& r, const io_uring_sqe& sqe) {
    const std::uint32_t flags = sqe.cancel_flags;
    const bool all = flags & (IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_ANY);
    std::vector<epoll_op*> victims;
    if (flags & (IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_FD)) {
        for (const auto& [ud, op] : _waiting) {
            if (op->owner == &r &&
                ((flags & IORING_ASYNC_CANCEL_ANY) || (op->list != list_none && op->sqe.fd == sqe.fd))) {
                victims.push_back(op);
                if (!all) {
                    break;
                }
            }
        }
    } else if (auto it = _waiting.find(sqe.addr); it != _waiting.end() && it->second->owner == &r) {
        victims.push_back(it->second);
    }
    // Operations with a linked timeout are waited for in _waiting; their
    // timeouts are not, and go with them.
    for (epoll_op* op : victims) {
        finish(op, -ECANCELED);
    }
    const auto n = static_cast<std::int32_t>(victims.size());
    r.post(sqe.user_data, all ? n : (n > 0 ? 0 : -ENOENT), 0);
}

void epoll_engine::run_timeout_remove(epoll_ring& r, const io_uring_sqe& sqe) {
    auto it = _waiting.find(sqe.addr);
    if (it == _waiting.end() || it->second->owner != &r || it->second->sqe.opcode != IORING_OP_TIMEOUT) {
        r.post(sqe.user_data, -ENOENT, 0);
        return;
    }
    finish(it->second, -ECANCELED);
    r.post(sqe.user_data, 0, 0);
}

void epoll_engine::cancel_fd(int fd) noexcept {
    if (fd < 0 || static_cast<std::size_t>(fd) >= _fds.size()) {
        return;
    }
    fd_state& st = _fds[static_cast<std::size_t>(fd)];
    for (auto& l : st.lists) {
        while (l[0]) {
            finish(l[0], -ECANCELED);
        }
    }
}

void epoll_engine::forget_fd(int fd) noexcept {
    if (fd < 0 || static_cast<std::size_t>(fd) >= _fds.size()) {
        return;
    }
    cancel_fd(fd);
    fd_state& st = _fds[static_cast<std::size_t>(fd)];
    // close(2) takes the descriptor out of the epoll set (when it was the
    // file's last reference); a later file with this number registers anew.
    const bool in_retry = st.in_retry;
    st = fd_state{};
    st.in_retry = in_retry;
}

void epoll_engine::drop_ring(epoll_ring& r) noexcept {
    std::vector<epoll_op*> mine;
    for (const auto& [ud, op] : _waiting) {
        if (op->owner == &r) {
            mine.push_back(op);
        }
    }
    for (epoll_op* op : mine) {
        epoll_op* t = op->link;
        unlink(op);
        free_op(op);
        if (t) {
            t->link = nullptr;
            unlink(t);
            free_op(t);
        }
    }
    while (!r._timers.empty()) {
        epoll_op* t = r._timers.front();
        if (t->link) {
            t->link->link = nullptr;
        }
        unlink(t);
        free_op(t);
    }
}

// --- buffer rings ------------------------------------------------------------

std::error_code epoll_engine::register_buffers(io_uring_buf_ring* br, unsigned entries, std::uint16_t group) {
    if (entries == 0 || (entries & (entries - 1)) != 0) {
        return std::make_error_code(std::errc::invalid_argument);
    }
    if (group >= _groups.size()) {
        _groups.resize(std::size_t{group} + 1);
    }
    if (_groups[group].br != nullptr) {
        return std::make_error_code(std::errc::file_exists);
    }
    _groups[group] = buffer_group{br, entries - 1, 0};
    return {};
}

void epoll_engine::unregister_buffers(std::uint16_t group) noexcept {
    if (group < _groups.size()) {
        _groups[group] = buffer_group{};
    }
}

// --- readiness ---------------------------------------------------------------

int epoll_engine::harvest(std::int64_t timeout_ns) {
    if (!_retry.empty()) {
        timeout_ns = 0;
    }
    epoll_event events[max_events];
    timespec ts{};
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1'000'000'000;
        ts.tv_nsec = timeout_ns % 1'000'000'000;
    }
    // epoll_pwait2 (5.11): a timeout in nanoseconds, so a timer 300 us away
    // is not rounded to a millisecond.
    int n = epoll_pwait2(_epfd, events, max_events, timeout_ns >= 0 ? &ts : nullptr, nullptr);
    if (n < 0 && errno == ENOSYS) {
        const std::int64_t ms = timeout_ns < 0 ? -1 : timeout_ns / 1'000'000 + (timeout_ns % 1'000'000 != 0);
        n = epoll_wait(_epfd, events, max_events, static_cast<int>(std::min<std::int64_t>(ms, INT_MAX)));
    }
    if (n < 0) {
        if (errno != EINTR) {
            return -errno;
        }
        n = 0;
    }
    for (int i = 0; i < n; ++i) {
        on_event(static_cast<int>(events[i].data.u64), events[i].events);
    }
    if (!_retry.empty()) {
        std::vector<int> again;
        again.swap(_retry);
        for (int fd : again) {
            fd_state& st = state(fd);
            st.in_retry = false;
            run_list(fd, list_in);
        }
    }
    expire_timers();
    return n;
}

void epoll_engine::on_event(int fd, std::uint32_t events) {
    if (fd < 0 || static_cast<std::size_t>(fd) >= _fds.size() || !_fds[static_cast<std::size_t>(fd)].registered) {
        return;  // a file closed since, whose edge was already queued
    }
    fd_state& st = _fds[static_cast<std::size_t>(fd)];
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        st.readable = true;
    }
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
        st.writable = true;
    }
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        st.hup = true;
    }
    complete_polls(st, events);
    run_list(fd, list_in);
    run_list(fd, list_out);
}

void epoll_engine::complete_polls(fd_state& st, std::uint32_t events) {
    for (epoll_op* op = st.lists[list_poll - 1][0]; op != nullptr;) {
        epoll_op* next = op->next;
        const std::uint32_t hit = events & (op->sqe.poll32_events | POLLERR | POLLHUP);
        if (hit) {
            finish(op, static_cast<std::int32_t>(hit));
        }
        op = next;
    }
}

void epoll_engine::run_list(int fd, list_kind list) {
    // `st` is looked up again after each attempt: an accept4 may grow _fds.
    for (;;) {
        fd_state& st = _fds[static_cast<std::size_t>(fd)];
        epoll_op* op = st.lists[list - 1][0];
        bool& ready = list == list_in ? st.readable : st.writable;
        if (op == nullptr || !ready) {
            return;
        }
        const outcome o = attempt(op);
        if (o == outcome::finished) {
            continue;
        }
        fd_state& after = _fds[static_cast<std::size_t>(fd)];
        if (o == outcome::blocked) {
            (list == list_in ? after.readable : after.writable) = false;
        } else if (!after.in_retry) {
            after.in_retry = true;
            _retry.push_back(fd);
        }
        return;
    }
}

}  // namespace shardd::internal

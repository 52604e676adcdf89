#pragma once
// The epoll backend's engine: one epoll instance per executor, the state of
// each descriptor it watches, the operations that wait, and the timers.
//
// Registration is edge-triggered (EPOLLET), for all of EPOLLIN, EPOLLOUT and
// EPOLLRDHUP, once per descriptor, as mio (tokio) does: no epoll_ctl per
// operation. The engine remembers per descriptor whether it may be readable
// and writable: an edge sets the bit, an EAGAIN (or a short read) clears it.
// An operation is tried at submit unless its bit is clear; one that would
// block waits on its descriptor's list until an edge runs it again.
//
// Descriptors are known by number, so a closed one must be forgotten before
// its number is reused (ring::forget_fd(), called by owned_fd and
// close_socket()); a descriptor accept4() hands out is forgotten too, in
// case its number was closed some other way.

#include "reactor/internal/ring.hh"

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

namespace shardd::internal {

class epoll_ring;

// An operation that outlives its submit: a copy of its SQE and where it
// waits (a descriptor's list, a timer heap, or both for a linked timeout).
struct epoll_op {
    static constexpr std::size_t no_index = SIZE_MAX;
    io_uring_sqe sqe;
    epoll_ring* owner = nullptr;
    // On a descriptor's list: which one, and the neighbours.
    epoll_op* prev = nullptr;
    epoll_op* next = nullptr;
    std::uint8_t list = 0;
    bool connecting = false;     // CONNECT: connect(2) said EINPROGRESS
    bool in_waiting = false;     // in epoll_engine::_waiting
    std::uint64_t done = 0;      // bytes: sent (MSG_WAITALL), received (multishot byte limit)
    std::uint64_t deadline = 0;  // timers: CLOCK_MONOTONIC nanoseconds
    std::size_t heap_index = no_index;
    // An operation and its linked timeout point at each other.
    epoll_op* link = nullptr;
    epoll_op* free_next = nullptr;
};

class epoll_engine {
public:
    static expected<std::shared_ptr<epoll_engine>> create();
    ~epoll_engine();
    epoll_engine(const epoll_engine&) = delete;
    epoll_engine& operator=(const epoll_engine&) = delete;

    int fd() const noexcept { return _epfd; }
    void attach(epoll_ring* r) noexcept;
    void detach(epoll_ring* r) noexcept;

    // Runs one SQE of `r`, with the LINK_TIMEOUT that follows it, if any.
    void start(epoll_ring& r, const io_uring_sqe& sqe, const io_uring_sqe* link_timeout);
    // Runs every attached ring's queued SQEs.
    void run_all_sqes();
    bool any_cqe() const noexcept;
    // One epoll_wait(2) (`timeout_ns` < 0: until something is ready), then
    // the edges it reported, the descriptors left ready last time, and the
    // due timers. Returns -errno on failure.
    int harvest(std::int64_t timeout_ns);
    // How long a wait may block: until the earliest timer of any ring (-1:
    // no timer; 0: work is left over without an edge).
    std::int64_t wait_timeout() const noexcept;

    std::error_code register_buffers(io_uring_buf_ring* br, unsigned entries, std::uint16_t group);
    void unregister_buffers(std::uint16_t group) noexcept;
    // Every operation waiting on `fd`, of any ring: -ECANCELED.
    void cancel_fd(int fd) noexcept;
    // The same, and the descriptor's registration and readiness are
    // forgotten: `fd` is being closed (or was, and has a new file).
    void forget_fd(int fd) noexcept;
    // Frees `r`'s waiting operations and timers without completing them
    // (the ring is going away).
    void drop_ring(epoll_ring& r) noexcept;

private:
    struct fd_state {
        bool registered = false;
        bool readable = false;
        bool writable = false;
        // The peer closed, or an error: reads run until EAGAIN or EOF, a
        // short read proves nothing.
        bool hup = false;
        bool in_retry = false;
        bool nonblocking = false;    // O_NONBLOCK set by us (accept, connect)
        bool stream_file = false;    // READ/WRITE: no offset (ESPIPE)
        bool no_nowait = false;      // READ/WRITE: RWF_NOWAIT is EOPNOTSUPP
        epoll_op* lists[3][2] = {};  // [in, out, poll][head, tail]
    };
    enum class outcome { finished, blocked, yielded };
    enum list_kind : std::uint8_t { list_none = 0, list_in = 1, list_out = 2, list_poll = 3 };
    struct buffer_group {
        io_uring_buf_ring* br = nullptr;
        unsigned mask = 0;
        std::uint16_t head = 0;
    };

    epoll_engine() = default;
    fd_state& state(int fd);
    // A fresh operation of `r`, holding a copy of `sqe`.
    epoll_op* alloc_op(epoll_ring& r, const io_uring_sqe& sqe);
    void free_op(epoll_op* op) noexcept;

    // Tries `op` once; finished: its final CQE is posted and it is freed.
    outcome attempt(epoll_op* op);
    outcome attempt_recv(epoll_op* op, fd_state& st);
    outcome attempt_send(epoll_op* op);
    outcome attempt_accept(epoll_op* op);
    outcome attempt_connect(epoll_op* op);
    void set_nonblocking(int fd);
    outcome attempt_rw(epoll_op* op, bool blocking);
    // Puts a blocked (or yielded) op on its descriptor's list.
    void wait(epoll_op* op, list_kind list, outcome why);
    bool ensure_registered(int fd, fd_state& st);
    // Whether the poll waits (false: it completed or failed at once).
    bool start_poll(epoll_op* op);
    void link_timer(epoll_ring& r, epoll_op* op, const io_uring_sqe& link_timeout);
    void start_timeout(epoll_op* op, bool link);
    void run_cancel(epoll_ring& r, const io_uring_sqe& sqe);
    void run_timeout_remove(epoll_ring& r, const io_uring_sqe& sqe);

    void on_event(int fd, std::uint32_t events);
    void run_list(int fd, list_kind list);
    void complete_polls(fd_state& st, std::uint32_t events);
    void expire_timers();

    // Posts `op`'s final CQE, takes it off every list and frees it (and its
    // linked timeout, which says -ECANCELED).
    void finish(epoll_op* op, std::int32_t res, std::uint32_t flags = 0);
    void unlink(epoll_op* op) noexcept;
    void timer_push(epoll_op* op);
    void timer_remove(epoll_op* op) noexcept;
    void timer_sift(std::vector<epoll_op*>& heap, std::size_t i) noexcept;
    void update_deadline(epoll_ring& r) noexcept;

    int _epfd = -1;
    epoll_ring* _rings[3] = {};
    std::vector<fd_state> _fds;
    // Waiting operations by user_data, for cancels and timeout removals.
    std::unordered_map<std::uint64_t, epoll_op*> _waiting;
    // Descriptors left readable by a bounded batch: run again at the next
    // harvest without waiting for an edge.
    std::vector<int> _retry;
    std::vector<buffer_group> _groups;
    std::vector<std::unique_ptr<epoll_op[]>> _op_chunks;
    epoll_op* _free_ops = nullptr;
};

}  // namespace shardd::internal

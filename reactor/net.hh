#pragma once
// TCP on the reactor: listening sockets, multishot accept and receive
// streams, sends that finish what they start, connect, shutdown, and a close
// that cancels the socket's pending operations first.
//
// Kernel: multishot accept 5.19, multishot recv and provided buffer rings
// 6.0 (liburing 2.3 API). Everything returns errors; nothing exits.
//
//   int lfd = *listen_socket(addr, {});
//   accept_stream incoming(lfd);
//   while (auto fd = co_await incoming.next()) { spawn(serve(*fd)); }

#include "reactor/buffer_ring.hh"
#include "reactor/executor.hh"
#include "reactor/io.hh"
#include "reactor/socket_address.hh"

#include <deque>
#include <span>

namespace shardd {

struct listen_options {
    int backlog = 4096;
    // Every shard binds the same address; the kernel spreads connections.
    bool reuse_port = true;
    // For [::]: IPv6 only, so that 0.0.0.0 on the same port is separate.
    bool v6_only = true;
};

// socket + SO_REUSEADDR (+ SO_REUSEPORT) + bind + listen; close-on-exec.
//
// Sockets here are blocking on purpose, as are accepted ones: io_uring waits
// for readiness itself, and on an O_NONBLOCK file some operations hand back
// -EAGAIN/-EINPROGRESS (connect then ends in EISCONN) instead of waiting.
expected<int> listen_socket(const socket_address& addr, const listen_options& opts);
// A TCP socket of `family` (AF_INET, AF_INET6) for connect().
expected<int> tcp_socket(int family);
// The address a socket is bound to (for port 0).
expected<socket_address> local_address(int fd);
std::error_code set_nodelay(int fd, bool on);

namespace internal {

// The state of a multishot operation. Heap-allocated: when its stream is
// destroyed while the kernel still holds the operation, it is cancelled and
// the state frees itself on the final CQE.
struct multishot_state : completion {
    enum class op { accept, recv };
    op what = op::accept;
    ring* on = nullptr;
    executor* exec = nullptr;
    buffer_ring* buffers = nullptr;  // recv
    int fd = -1;
    std::deque<std::pair<int, std::uint32_t>> ready;
    bool armed = false;
    bool cancelled = false;
    bool orphaned = false;
    std::coroutine_handle<> waiter;
    task_queue* queue = nullptr;

    void arm();
    void cancel();
    void release_ready();  // hands back buffers of unread completions
    static void on_cqe(completion* c, int res, std::uint32_t flags) noexcept;
};

void retire(multishot_state* s) noexcept;

}  // namespace internal

// Accepted connections from a listening socket, through one multishot accept
// on the latency ring, re-armed when the kernel ends it.
class accept_stream {
public:
    explicit accept_stream(int listen_fd);
    ~accept_stream();
    accept_stream(const accept_stream&) = delete;
    accept_stream& operator=(const accept_stream&) = delete;

    // The next connection's fd, or an error: EMFILE/ENFILE (back off and
    // call again), errc::operation_canceled after cancel().
    auto next() { return next_op{_s}; }
    // Stops accepting; next() drains what was already accepted, then
    // returns errc::operation_canceled.
    void cancel() { _s->cancel(); }

    struct next_op {
        internal::multishot_state* s;
        bool await_ready();
        void await_suspend(std::coroutine_handle<> h);
        expected<int> await_resume();
    };

private:
    internal::multishot_state* _s;
};

struct received {
    std::span<std::byte> data;  // empty: the peer closed its write side
    std::uint16_t buffer_id = 0;
};

// Data from a connected socket through one multishot receive into `buffers`
// (on the buffer ring's ring). Every non-empty `received` holds a buffer
// until buffers.release(buffer_id).
class recv_stream {
public:
    recv_stream(int fd, buffer_ring& buffers);
    ~recv_stream();
    recv_stream(const recv_stream&) = delete;
    recv_stream& operator=(const recv_stream&) = delete;

    // The next chunk; data().empty() at end of stream. errc::no_buffer_space
    // when the buffer ring ran dry: release buffers, then call next() again
    // (it re-arms). errc::operation_canceled after cancel().
    auto next() { return next_op{_s}; }
    void cancel() { _s->cancel(); }

    struct next_op {
        internal::multishot_state* s;
        bool await_ready();
        void await_suspend(std::coroutine_handle<> h);
        expected<received> await_resume();
    };

private:
    internal::multishot_state* _s;
};

// One send(2) with MSG_NOSIGNAL: may be short.
inline auto send_some(int fd, const void* data, std::uint32_t len) {
    return io_op(&executor::current()->main_ring(),
                 [=](io_uring_sqe* sqe) { io_uring_prep_send(sqe, fd, data, len, MSG_NOSIGNAL); });
}
// Sends all of `data`, continuing after short sends.
task<expected<std::size_t>> send_all(int fd, std::span<const std::byte> data);

// One recv(2) into a buffer of ours.
inline auto recv_some(int fd, void* buf, std::uint32_t len) {
    return io_op(&executor::current()->ring_for_current(),
                 [=](io_uring_sqe* sqe) { io_uring_prep_recv(sqe, fd, buf, len, 0); });
}

// Connects `fd` to `addr`.
task<std::error_code> connect(int fd, socket_address addr);

inline auto shutdown_socket(int fd, int how) {
    return io_op(&executor::current()->main_ring(), [=](io_uring_sqe* sqe) { io_uring_prep_shutdown(sqe, fd, how); });
}

// Cancels every operation pending on `fd` on every ring, waits for the
// cancellations, then closes it: the fd number cannot be reused while the
// kernel still holds an operation for the old socket.
task<std::error_code> close_socket(int fd);

}  // namespace shardd

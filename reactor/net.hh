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

#include <cstdint>
#include <deque>
#include <limits>
#include <span>
#include <sys/socket.h>

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
    // pause(): the multishot is being cancelled until the next next(). Its
    // -ECANCELED ending is swallowed, and re-armed at once if next() already
    // waits.
    bool paused = false;
    bool pausing = false;  // the pause's cancel is in flight
    // After a pause, receive one buffer per next() (one-shot receives)
    // until one comes back short, i.e. the socket's queue is drained; only
    // then go back to multishot. A multishot receive re-armed on a full
    // queue would take all of it at once (the kernel loops while data
    // and buffers last), however little the consumer asked for.
    bool pull = false;
    // The armed multishot carries a byte limit (unread_limit at arm time).
    bool limited = false;
    // recv: bytes in `ready`, and the amount above which the stream pauses
    // itself (backpressure that holds while its reader is busy elsewhere).
    std::size_t ready_bytes = 0;
    std::size_t unread_limit = std::numeric_limits<std::size_t>::max();
    std::uint64_t pauses = 0;
    bool orphaned = false;
    std::coroutine_handle<> waiter;
    task_queue* queue = nullptr;

    void arm();
    void cancel();
    void pause();
    void release_ready();  // hands back buffers of unread completions
    static void on_cqe(completion* c, int res, std::uint32_t flags) noexcept;
};

void retire(multishot_state* s) noexcept;
bool stream_ready(multishot_state* s);
void stream_suspend(multishot_state* s, std::coroutine_handle<> h);

// What accept_stream and recv_stream share: the owned state, cancel(), and
// the awaitable of next(), which turns a CQE into `T` through `convert`.
template <typename T, expected<T> (*convert)(multishot_state*, int res, std::uint32_t flags)>
class multishot_stream {
public:
    multishot_stream(const multishot_stream&) = delete;
    multishot_stream& operator=(const multishot_stream&) = delete;
    ~multishot_stream() { retire(_s); }

    struct next_op {
        multishot_state* s;
        bool await_ready() { return stream_ready(s); }
        void await_suspend(std::coroutine_handle<> h) { stream_suspend(s, h); }
        expected<T> await_resume() {
            if (s->ready.empty()) {
                return unexpected{std::make_error_code(std::errc::operation_canceled)};
            }
            auto [res, flags] = s->ready.front();
            s->ready.pop_front();
            if (res < 0) {
                return unexpected{errno_code(res)};
            }
            return convert(s, res, flags);
        }
    };
    auto next() { return next_op{_s}; }
    // Whether next() has something at once (no suspension, no syscall).
    bool has_ready() const noexcept { return !_s->ready.empty(); }
    // Stops the operation; next() drains what already arrived, then returns
    // errc::operation_canceled.
    void cancel() { _s->cancel(); }
    // Stops the operation until the next call to next(), which re-arms it:
    // backpressure. What arrived before the kernel saw the cancel is still
    // delivered. From then on each next() receives at most one buffer until
    // the socket's queue is drained (a short read), then multishot again.
    void pause() { _s->pause(); }
    // Takes at most `bytes` (rounded up to whole buffers) that next() has
    // not yet returned: each multishot is armed with that byte limit, which
    // the kernel enforces, and where the kernel lacks it (EINVAL, learnt
    // once) the stream pauses itself once it has received more. The reader
    // sets it, before next(), to what it may still take.
    void limit_unread(std::size_t bytes) noexcept { _s->unread_limit = bytes; }
    // How many times the stream paused (either way).
    std::uint64_t pauses() const noexcept { return _s->pauses; }

protected:
    explicit multishot_stream(multishot_state* s) : _s(s) {}
    multishot_state* _s;
};

expected<int> accepted_fd(multishot_state*, int res, std::uint32_t);

}  // namespace internal

// Accepted connections from a listening socket, through one multishot accept
// on the latency ring, re-armed when the kernel ends it. next() gives the
// connection's fd, or an error: EMFILE/ENFILE (back off and call again),
// errc::operation_canceled after cancel().
class accept_stream : public internal::multishot_stream<int, internal::accepted_fd> {
public:
    explicit accept_stream(int listen_fd);
};

struct received {
    std::span<std::byte> data;  // empty: the peer closed its write side
    std::uint16_t buffer_id = 0;
};

namespace internal {
expected<received> received_chunk(multishot_state* s, int res, std::uint32_t flags);
}

// Data from a connected socket through one multishot receive into `buffers`
// (on the buffer ring's ring). Every non-empty `received` holds a buffer
// until buffers.release(buffer_id). next() gives the next chunk, empty data
// at end of stream; errc::no_buffer_space when the buffer ring ran dry:
// release buffers, then call next() again (it re-arms).
class recv_stream : public internal::multishot_stream<received, internal::received_chunk> {
public:
    recv_stream(int fd, buffer_ring& buffers);
};

// One send(2) with MSG_NOSIGNAL: may be short.
inline auto send_some(int fd, const void* data, std::uint32_t len) {
    return io_op(&executor::current()->main_ring(),
                 [=](io_uring_sqe* sqe) { io_uring_prep_send(sqe, fd, data, len, MSG_NOSIGNAL); });
}
// One sendmsg(2) with MSG_NOSIGNAL (gathers several buffers): may be short.
// `msg` and its iovecs must live until the operation completes.
inline auto send_msg(int fd, const msghdr* msg) {
    return io_op(&executor::current()->main_ring(),
                 [=](io_uring_sqe* sqe) { io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL); });
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

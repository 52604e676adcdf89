#pragma once
// TCP on the reactor: listening sockets, sends that finish what they start,
// connect, shutdown, and a close that cancels the socket's pending
// operations first. The multishot streams are in accept_stream.hh and
// recv_stream.hh.
//
// Kernel: multishot accept 5.19, multishot recv and provided buffer rings
// 6.0 (liburing 2.3 API). Everything returns errors; nothing exits.
//
//   owned_fd l = *listen_socket(addr, {});
//   accept_stream incoming(l.get());
//   while (auto fd = co_await incoming.next()) { spawn(serve(std::move(*fd))); }

#include "reactor/accept_stream.hh"
#include "reactor/buffer_ring.hh"
#include "reactor/executor.hh"
#include "reactor/io.hh"
#include "reactor/owned_fd.hh"
#include "reactor/recv_stream.hh"
#include "reactor/socket_address.hh"

#include <cstdint>
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
// (The daemon sets O_NONBLOCK on a connected socket once it splices, for
// splice(2): server/splice_pipes.hh says why that is safe there.)
expected<owned_fd> listen_socket(const socket_address& addr, const listen_options& opts);
// A TCP socket of `family` (AF_INET, AF_INET6) for connect().
expected<owned_fd> tcp_socket(int family);
// The address a socket is bound to (for port 0).
expected<socket_address> local_address(int fd);
// The address of a connected socket's peer (ENOTCONN once it is gone).
expected<socket_address> peer_address(int fd);
std::error_code set_nodelay(int fd, bool on);

// One send(2) with MSG_NOSIGNAL (and `flags`, e.g. MSG_DONTWAIT: see
// send_msg): may be short.
inline auto send_some(int fd, const void* data, std::uint32_t len, int flags = 0) {
    return io_op(&executor::current()->main_ring(),
                 [=](io_uring_sqe* sqe) { io_uring_prep_send(sqe, fd, data, len, MSG_NOSIGNAL | flags); });
}
// One sendmsg(2) with MSG_NOSIGNAL (gathers several buffers): may be short.
// `msg` and its iovecs must live until the operation completes. With
// MSG_DONTWAIT in `flags` it never waits for the peer: it completes in the
// io_uring_enter that submits it, with what fitted in the socket's send
// buffer, or -EAGAIN when nothing did (io_uring marks such a request
// no-wait instead of arming a poll for it).
inline auto send_msg(int fd, const msghdr* msg, int flags = 0) {
    return io_op(&executor::current()->main_ring(),
                 [=](io_uring_sqe* sqe) { io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL | flags); });
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
// The same as one operation, for .with_timeout() and .with_abort(); `addr`
// must live until it completes.
inline auto connect_op(int fd, const socket_address& addr) {
    const socket_address* a = &addr;
    return io_op(&executor::current()->main_ring(),
                 [fd, a](io_uring_sqe* sqe) { io_uring_prep_connect(sqe, fd, a->get(), a->length()); });
}
// One recv(2) with MSG_PEEK: what has arrived stays in the socket. Waits
// for at least one byte (or EOF: 0).
inline auto recv_peek(int fd, void* buf, std::uint32_t len) {
    return io_op(&executor::current()->main_ring(),
                 [=](io_uring_sqe* sqe) { io_uring_prep_recv(sqe, fd, buf, len, MSG_PEEK); });
}

// shutdown(2), synchronously: for TCP it queues a FIN (or wakes readers)
// and returns, so a ring round trip would only add a wait. (io_uring's
// SHUTDOWN op always goes to an io-wq worker thread.)
std::error_code shutdown_socket(int fd, int how);

// Cancels every operation pending on `fd` on the calling shard's main and
// latency rings (IORING_REGISTER_SYNC_CANCEL, 6.0: one syscall each, no
// ring round trip), then closes it. For a socket whose operations the
// caller has not stopped itself; one that has (its streams stopped, its
// sends awaited) just closes its owned_fd.
std::error_code close_socket(int fd);

}  // namespace shardd

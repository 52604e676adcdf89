#pragma once
// Zero-copy relay for bulk streams: splice(2) from the receiving socket into
// a pipe, and from the pipe to the sending socket. The pipe holds references
// to the kernel's pages of the received segments, and the send takes those
// same pages (MSG_SPLICE_PAGES, Linux 6.5; sendpage before it), so no byte is
// copied by the shard: the two copies of a receive/send relay (socket to
// buffer, buffer to socket) are 35% of the shard's CPU with 64 KiB messages,
// and go (issue 13's profile; bench/compare's 16x1x64KiB cell). HAProxy's
// `option splice-auto` does the same for the same reason.
//
// Why plain syscalls and not IORING_OP_SPLICE: io_uring runs every splice
// in an io-wq worker (it marks them REQ_F_FORCE_ASYNC, as of 6.18), a thread
// hop and a wake-up per call, which costs more than the copies it saves. So
// the transit calls splice(2) with SPLICE_F_NONBLOCK on non-blocking
// sockets from its shard, and waits for readiness through the ring
// (poll_fd), as an epoll loop would. Two syscalls per burst cost less than
// copying 64 KiB twice; for small messages they cost more, so a transit
// splices only once a receive fills a whole pool buffer (transit.hh).
//
// The pipes are counted per shard: a transit opens one when it starts to
// splice and closes it when it goes back to copying or ends (one pipe2 and
// two closes per switch, and a bulk stream splices for many messages), so a
// shard keeps no descriptors for streams that are gone. At the shard's
// maximum (or with no descriptors left) the transit keeps copying, which
// always works. A pipe holds at most max_pending bytes (the length each
// splice asks for), its pages are charged to the kernel's pipe accounting
// (fs.pipe-user-pages-soft), and an empty pipe holds no page.

#include "reactor/expected.hh"

#include <cstddef>

namespace shardd::server {

struct splice_pipe {
    int read_end = -1;
    int write_end = -1;
};

// A shard's pipes: how many are open, against its maximum.
class splice_pipes {
public:
    explicit splice_pipes(std::size_t max_pipes) noexcept : _max(max_pipes) {}
    splice_pipes(const splice_pipes&) = delete;
    splice_pipes& operator=(const splice_pipes&) = delete;

    // A new pipe (both ends non-blocking), or false: the shard is at its
    // maximum, or pipe2() failed (no descriptors); the caller copies.
    bool open(splice_pipe& out) noexcept;
    // Closes it (dropping whatever it still holds).
    void close(splice_pipe p) noexcept;

private:
    std::size_t _max;
    std::size_t _open = 0;
};

// One splice(2) of up to `len` bytes, never blocking (both ends must be
// non-blocking, or pipes): the bytes moved, 0 at the end of the input
// stream, or the error (resource_unavailable_try_again: nothing to move yet).
expected<std::size_t> splice_some(int in_fd, int out_fd, std::size_t len) noexcept;

// Makes a socket non-blocking, which splice(2) needs for its socket end.
// Once set it stays: what the transit asks of io_uring on that socket
// afterwards (multishot RECV, SEND, SENDMSG; the proxy's CONNECT is over by
// then) still waits for readiness, as io_uring arms a poll when the socket
// says EAGAIN. Only operations issued from an io-wq worker would see EAGAIN
// instead, and the one the transit's owners send there (SHUTDOWN) does not
// wait for data. See reactor/net.hh on why sockets start blocking.
std::error_code make_nonblocking(int fd) noexcept;

// Whether splice(2) works between sockets and pipes here. Learnt from the
// first failure that says it cannot (EINVAL, ENOSYS, EPERM from a seccomp
// filter, EOPNOTSUPP), once per process; from then on every transit copies.
bool splice_usable() noexcept;
void splice_unusable(std::error_code why) noexcept;
bool says_splice_unusable(std::error_code ec) noexcept;

}  // namespace shardd::server

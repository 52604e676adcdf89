#pragma once
// accept_stream: the connections of a listening socket, through one
// multishot accept (Linux 5.19), re-armed when the kernel ends it.
//
// On the main ring, not the latency ring: a burst of connections must not
// end the running throughput slice once per connection (a latency-ring CQE
// is what need_preempt() watches). At most `max_ready` accepted connections
// wait for next(): beyond that the stream stops accepting, and the kernel's
// listen backlog holds the rest, until the reader catches up.
//
//   accept_stream incoming(lfd, &listener_abort);
//   while (auto fd = co_await incoming.next()) { spawn(serve(std::move(*fd))); }

#include "reactor/abort_source.hh"
#include "reactor/expected.hh"
#include "reactor/internal/stream_core.hh"
#include "reactor/owned_fd.hh"

#include <deque>

namespace shardd {

namespace internal {

class accept_state final : public stream_core {
public:
    accept_state(int listen_fd, abort_source* abort);

    expected<owned_fd> take();
    bool has_ready() const noexcept override { return !_ready.empty(); }

private:
    void prep(io_uring_sqe* sqe) override;
    void release_ready() noexcept override;
    static void on_cqe(completion* c, int res, std::uint32_t flags) noexcept;

    std::deque<int> _ready;  // descriptors, or -errno
};

}  // namespace internal

// next() gives an accepted connection, or an error: EMFILE/ENFILE/ENOMEM
// (back off, then call again: it re-arms), errc::operation_canceled after
// stop() or the abort_source.
class accept_stream {
public:
    // Accepted connections that may wait for next(). 64: a few hundred
    // microseconds of connection set-up for the reader, a few KiB of
    // descriptors; the listen backlog (thousands) holds the rest.
    static constexpr std::size_t max_ready = 64;

    explicit accept_stream(int listen_fd, abort_source* abort = nullptr);
    ~accept_stream() { _s->retire(); }
    accept_stream(const accept_stream&) = delete;
    accept_stream& operator=(const accept_stream&) = delete;

    internal::stream_next_op<internal::accept_state> next() { return {_s}; }
    bool has_ready() const noexcept { return _s->has_ready() && !_s->aborted(); }

    // Stops accepting for good and waits until the kernel has let go.
    internal::stream_settle_op stop() {
        _s->stop();
        return {_s};
    }

private:
    internal::accept_state* _s;
};

}  // namespace shardd

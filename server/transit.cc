#include "server/transit.hh"

#include "reactor/io.hh"
#include "reactor/net.hh"

#include <algorithm>
#include <cstring>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

namespace shardd::server {

namespace {

// Buffers taken into one round: 64 x 16 KiB = 1 MiB per send, well under
// IOV_MAX (1024) for raw echo; more would only delay handing the first ones
// back.
constexpr std::size_t max_batch_buffers = 64;
// Ranges per sendmsg. sockperf replies can make several per buffer (a
// warm-up message between two replies splits a range); IOV_MAX is 1024.
constexpr std::size_t max_send_iovecs = 1024;
// The spill's first allocation; it doubles from there as needed (up to
// max_pending, by the receive's byte limit).
constexpr std::size_t min_spill = 4096;
// A spliced relay goes back to copying (and gives its pipe back) after this
// many receives in a row that were each shorter than a pool buffer: the
// stream is no longer bulk. An epoll echo that splices costs what a copying
// one does at 64 x 4 KiB messages (5.6-6.1 vs 5.7-5.9 us/msg, server CPU),
// and a quarter less at 16 x 64 KiB (13.4 vs 17-19): below a buffer's worth
// per receive the syscalls eat what the copies would have cost. More than
// one, so that a bulk stream whose segments sometimes arrive split does not
// bounce between the two (each switch costs a cancel and a re-arm).
constexpr unsigned splice_small_reads_to_leave = 4;

std::string peer_name(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        return "?";
    }
    return socket_address(reinterpret_cast<sockaddr*>(&ss), len).to_string();
}

bool is_cancel(const std::error_code& ec) { return ec == std::errc::operation_canceled; }

// A coroutine of its own, not inline in transit::run(): the awaiter is 120
// bytes, and run()'s frame (which every idle connection carries) would hold
// it for a wait that only a starved pool needs.
task<bool> wait_for_buffers(recv_stream& rx, abort_source& abort) {
    auto op = rx.wait_for_buffers(&abort);
    co_return co_await op;
}

}  // namespace

round_scratch* transit_env::take_scratch() {
    if (_free.empty()) {
        _all.push_back(std::make_unique<round_scratch>());
        // Room for every scratch, so that give_scratch() never allocates.
        _free.reserve(_all.size());
        return _all.back().get();
    }
    round_scratch* s = _free.back();
    _free.pop_back();
    return s;
}

void transit_env::give_scratch(round_scratch* s) noexcept {
    s->held.clear();
    s->out.clear();
    _free.push_back(s);
}

transit::transit(int in_fd, int out_fd, transit_env& env, const transit_options& opts)
    : _in_fd(in_fd), _out_fd(out_fd), _env(env),
      _max_pending(static_cast<std::uint32_t>(std::min<std::size_t>(opts.max_pending, UINT32_MAX))),
      _splice_allowed(opts.splice && opts.protocol == config::echo_protocol::raw && env.pipes != nullptr) {
    if (opts.protocol == config::echo_protocol::sockperf) {
        _sockperf = std::make_unique<sockperf_state>(opts.max_message);
    }
}

bool transit::absorb(std::byte* data, std::uint32_t len, std::uint16_t bid) {
    if (!_round) {
        _round = _env.take_scratch();
    }
    _round->held.push_back(bid);
    _activity += len;
    _env.counters.bytes_in.add(len);
    if (!_sockperf) {
        _round->out.push_back({data, len});
        _bulk_seen = _bulk_seen || len == _env.buffers.buffer_size();
        return true;
    }
    _sockperf->error = _sockperf->framing.feed(data, len, _round->out, _sockperf->copies);
    return _sockperf->error.empty();
}

void transit::end_round() noexcept {
    if (!_round) {
        return;
    }
    for (std::uint16_t bid : _round->held) {
        _env.buffers.release(bid);
    }
    _env.give_scratch(std::exchange(_round, nullptr));
    if (_sockperf) {
        _sockperf->copies.clear();
    }
}

void transit::spill(std::size_t first) {
    std::vector<iovec>& out = _round->out;
    std::size_t need = _spill_len;
    for (std::size_t i = first; i < out.size(); ++i) {
        need += out[i].iov_len;
    }
    if (need > _spill_cap) {
        std::size_t cap = std::max(_spill_cap * 2, min_spill);
        while (cap < need) {
            cap *= 2;
        }
        auto grown = std::make_unique<std::byte[]>(cap);
        if (_spill_len > 0) {
            std::memcpy(grown.get(), _spill.get(), _spill_len);
        }
        _spill = std::move(grown);
        _spill_cap = cap;
    }
    for (std::size_t i = first; i < out.size(); ++i) {
        std::memcpy(_spill.get() + _spill_len, out[i].iov_base, out[i].iov_len);
        _spill_len += out[i].iov_len;
        _env.counters.bytes_spilled.add(out[i].iov_len);
    }
}

task<std::error_code> transit::send_round(recv_stream& rx, std::optional<transit_end>& end, bool& eof) {
    std::vector<iovec>& out = _round->out;
    if (_spill_len > 0) {
        // Behind what already waits for the peer.
        spill(0);
        co_return std::error_code{};
    }
    std::size_t first = 0;
    while (first < out.size()) {
        const std::size_t n = std::min(out.size() - first, max_send_iovecs);
        std::size_t wanted = 0;
        for (std::size_t i = first; i < first + n; ++i) {
            wanted += out[i].iov_len;
        }
        expected<std::uint32_t> sent = 0u;
        if (n == 1) {
            // IORING_OP_SEND: no msghdr for the kernel to copy in.
            sent = co_await send_some(_out_fd, out[first].iov_base, static_cast<std::uint32_t>(wanted), MSG_DONTWAIT)
                       .with_abort(_abort);
        } else {
            msghdr msg{};
            msg.msg_iov = &out[first];
            msg.msg_iovlen = n;
            sent = co_await send_msg(_out_fd, &msg, MSG_DONTWAIT).with_abort(_abort);
        }
        if (!sent && sent.error() != std::errc::resource_unavailable_try_again) {
            co_return sent.error();
        }
        const std::size_t done = sent ? *sent : 0;
        _env.counters.bytes_out.add(done);
        _activity += done;
        _sent += done;
        // Drop what went out; a short send leaves the rest of an iovec.
        for (std::size_t left = done; left > 0;) {
            iovec& v = out[first];
            const std::size_t take = std::min(left, v.iov_len);
            v.iov_base = static_cast<std::byte*>(v.iov_base) + take;
            v.iov_len -= take;
            left -= take;
            if (v.iov_len == 0) {
                ++first;
            }
        }
        if (done < wanted) {
            break;  // the socket's send buffer is full
        }
    }
    if (first == out.size()) {
        if (splice_next(rx, eof, end)) {
            // All sent, and the stream is bulk: splice from here. Awaited in
            // this coroutine, not in run(), whose frame every idle
            // connection carries (GCC keeps each co_await's temporaries in
            // the frame: 32 bytes per connection).
            end_round();
            eof = co_await relay_spliced(rx, end) == splice_exit::eof;
        }
        co_return std::error_code{};
    }
    // The peer does not keep up: keep the rest ourselves, and stop taking
    // pool buffers for this socket until it is out.
    _env.counters.backpressure_pauses.add();
    spill(first);
    end_round();
    co_await rx.pause();
    co_return std::error_code{};
}

bool transit::splice_next(const recv_stream& rx, bool eof, const std::optional<transit_end>& end) noexcept {
    if (!_bulk_seen || !_splice_allowed || eof || end || rx.has_ready()) {
        return false;
    }
    _bulk_seen = false;
    return true;
}

task<transit::splice_exit> transit::relay_spliced(recv_stream& rx, std::optional<transit_end>& end) {
    splice_pipe p;
    if (!splice_usable() || !_env.pipes->open(p)) {
        co_return splice_exit::copy;
    }
    struct close_on_exit {
        splice_pipes& pipes;
        splice_pipe p;
        ~close_on_exit() { pipes.close(p); }
    } guard{*_env.pipes, p};
    if (!_nonblocking) {
        std::error_code ec = make_nonblocking(_in_fd);
        if (!ec && _out_fd != _in_fd) {
            ec = make_nonblocking(_out_fd);
        }
        if (ec) {
            co_return splice_exit::copy;
        }
        _nonblocking = true;
    }
    // From here the socket's bytes are the pipe's to take: the kernel must
    // have let go of the receive, and what it took before goes out first.
    co_await rx.pause();
    if (rx.has_ready()) {
        _bulk_seen = true;  // splice after those
        co_return splice_exit::copy;
    }
    unsigned small_reads = 0;
    bool moved_any = false;
    bool drained = false;
    for (;;) {
        if (drained) {
            // Wait until bytes are queued (an idle spliced relay holds its
            // empty pipe and no pool buffer). A poll armed on a socket that
            // already has bytes completes at once, so waiting first after a
            // short splice is safe, and saves the splice that would only
            // have said EAGAIN: one syscall in three per message.
            auto ready = co_await poll_fd(_in_fd, POLLIN).with_abort(_abort);
            if (!ready) {
                end = failed(ready.error(), transit_end::recv_error);
                co_return splice_exit::ended;
            }
        }
        auto n = splice_some(_in_fd, p.write_end, _max_pending);
        drained = true;
        if (!n) {
            if (n.error() == std::errc::resource_unavailable_try_again) {
                continue;
            }
            if (!moved_any && says_splice_unusable(n.error())) {
                splice_unusable(n.error());
                co_return splice_exit::copy;
            }
            end = failed(n.error(), transit_end::recv_error);
            co_return splice_exit::ended;
        }
        if (*n == 0) {
            co_return splice_exit::eof;
        }
        moved_any = true;
        std::size_t in_pipe = *n;
        _activity += *n;
        _env.counters.bytes_in.add(*n);
        _env.counters.bytes_spliced.add(*n);
        while (in_pipe > 0) {
            auto m = splice_some(p.read_end, _out_fd, in_pipe);
            if (!m) {
                if (m.error() != std::errc::resource_unavailable_try_again) {
                    end = failed(m.error(), transit_end::send_error);
                    co_return splice_exit::ended;
                }
                // The receiver does not keep up: the pipe holds the rest
                // (at most max_pending), and nothing more is read.
                _env.counters.backpressure_pauses.add();
                auto ready = co_await poll_fd(_out_fd, POLLOUT).with_abort(_abort);
                if (!ready) {
                    end = failed(ready.error(), transit_end::send_error);
                    co_return splice_exit::ended;
                }
                continue;
            }
            in_pipe -= *m;
            _activity += *m;
            _sent += *m;
            _env.counters.bytes_out.add(*m);
        }
        // Less than asked for: the socket's queue is (most likely) empty.
        drained = *n < _max_pending;
        small_reads = *n < _env.buffers.buffer_size() ? small_reads + 1 : 0;
        if (small_reads == splice_small_reads_to_leave) {
            co_return splice_exit::copy;
        }
    }
}

task<std::error_code> transit::send_spill(recv_stream* rx, std::optional<transit_end>* end, bool* eof) {
    std::size_t off = 0;
    while (off < _spill_len) {
        const auto chunk = static_cast<std::uint32_t>(std::min<std::size_t>(_spill_len - off, UINT32_MAX));
        auto n = co_await send_some(_out_fd, _spill.get() + off, chunk).with_abort(_abort);
        if (!n) {
            co_return n.error();
        }
        off += *n;
        _env.counters.bytes_out.add(*n);
        _activity += *n;
        _sent += *n;
    }
    // All out: an idle connection keeps no memory of its own.
    _spill.reset();
    _spill_len = 0;
    _spill_cap = 0;
    if (rx != nullptr && splice_next(*rx, *eof, *end)) {
        // A bulk stream whose receiver fell behind: the receive is paused
        // already, so splice from here (the pipe is the backpressure now).
        *eof = co_await relay_spliced(*rx, *end) == splice_exit::eof;
    }
    co_return std::error_code{};
}

transit_end transit::failed(std::error_code ec, transit_end what) noexcept {
    if (is_cancel(ec)) {
        return transit_end::aborted;
    }
    _error = ec;
    return what;
}

void transit::log_protocol_error() {
    _env.counters.protocol_errors.add();
    if (!_env.log.allow()) {
        return;
    }
    const std::uint64_t suppressed = _env.log.take_suppressed();
    if (suppressed > 0) {
        spdlog::warn("closing connection from {}: {} ({} similar line{} suppressed)", peer_name(_in_fd),
                     _sockperf->error, suppressed, suppressed == 1 ? "" : "s");
    } else {
        spdlog::warn("closing connection from {}: {}", peer_name(_in_fd), _sockperf->error);
    }
}

task<transit_end> transit::run() {
    recv_stream rx(_in_fd, _env.buffers, &_abort);
    struct release_on_exit {
        transit& c;
        ~release_on_exit() { c.end_round(); }
    } guard{*this};

    bool eof = false;
    std::optional<transit_end> end;
    while (!end) {
        if (_spill_len > 0 && !rx.has_ready()) {
            // The receive is paused and nothing of the pool is held: wait on
            // the peer for as long as it takes (or until abort()).
            const std::error_code ec = co_await send_spill(&rx, &end, &eof);
            if (ec) {
                end = failed(ec, transit_end::send_error);
            }
            continue;
        }
        if (eof) {
            break;
        }
        // A round: one completion (waiting for it if none is there), then
        // every completion already there, so that one send carries them all.
        rx.limit_unread(_max_pending);
        bool starved = false;
        do {
            auto r = co_await rx.next();
            if (!r) {
                if (r.error() == std::errc::no_buffer_space) {
                    _env.counters.enobufs.add();
                    starved = true;
                } else {
                    end = failed(r.error(), transit_end::recv_error);
                }
                break;
            }
            if (r->data.empty()) {
                eof = true;
                break;
            }
            if (!absorb(r->data.data(), static_cast<std::uint32_t>(r->data.size()), r->buffer_id)) {
                // What earlier messages are owed still goes out below.
                end = transit_end::protocol_error;
                break;
            }
        } while (rx.has_ready() && _round->held.size() < max_batch_buffers);

        if (_round && !_round->out.empty() && (!end || *end == transit_end::protocol_error)) {
            const std::error_code ec = co_await send_round(rx, end, eof);
            if (ec && !end) {
                end = failed(ec, transit_end::send_error);
            }
        }
        end_round();
        if (starved && !end && !eof && _spill_len == 0) {
            // Out of pool buffers: wait for one, first come first served.
            // Not with a spill to send: the wake token would be held while
            // we wait on our peer; the spill goes first, then next() asks
            // again. (Awaited outside the if: GCC 12 miscompiles a co_await
            // of a temporary awaitable in an if condition; it traps.)
            const bool got = co_await wait_for_buffers(rx, _abort);
            if (!got) {
                end = transit_end::aborted;
            }
        }
    }
    if (end == transit_end::protocol_error) {
        if (_spill_len > 0) {
            // The replies owed before the bad message, then close.
            co_await send_spill();
        }
        log_protocol_error();
    }
    _env.counters.backpressure_pauses.add(rx.pauses());
    // Nothing of ours may stay in the kernel: the caller closes the socket.
    co_await rx.stop();
    co_return end.value_or(transit_end::closed);
}

}  // namespace shardd::server

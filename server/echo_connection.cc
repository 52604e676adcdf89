#include "server/echo_connection.hh"

#include "reactor/net.hh"

#include <algorithm>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

namespace shardd::server {

namespace {

// Buffers gathered into one sendmsg. 64 x 16 KiB = 1 MiB per send, well
// under IOV_MAX (1024); more would only delay releasing the first buffers.
constexpr std::size_t max_send_iovecs = 64;

std::string peer_name(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        return "?";
    }
    return socket_address(reinterpret_cast<sockaddr*>(&ss), len).to_string();
}

}  // namespace

echo_connection::echo_connection(int fd, buffer_ring& buffers, const echo_options& opts, shard_counters& counters)
    : _fd(fd), _buffers(buffers), _opts(opts), _counters(counters) {
    if (opts.protocol == config::echo_protocol::sockperf) {
        _framing.emplace(opts.max_message);
    }
}

bool echo_connection::absorb(std::byte* data, std::uint32_t len, std::uint16_t bid) {
    _held.push_back({bid, len});
    _held_bytes += len;
    _activity += len;
    _counters.bytes_in.add(len);
    if (!_framing) {
        _out.push_back({data, len});
        return true;
    }
    _protocol_error = _framing->feed(data, len, _out);
    return _protocol_error.empty();
}

// Every held buffer except those holding an incomplete sockperf header has
// been sent (or needs no reply): hand them back.
void echo_connection::release_done() {
    const std::size_t keep = _framing ? _framing->held_chunks() : 0;
    while (_held.size() > keep) {
        _held_bytes -= _held.front().len;
        _buffers.release(_held.front().bid);
        _held.pop_front();
    }
}

task<std::error_code> echo_connection::flush() {
    std::size_t first = 0;
    while (first < _out.size()) {
        const std::size_t n = std::min(_out.size() - first, max_send_iovecs);
        expected<std::uint32_t> sent = 0u;
        if (n == 1) {
            sent = co_await send_some(_fd, _out[first].iov_base, static_cast<std::uint32_t>(_out[first].iov_len));
        } else {
            msghdr msg{};
            msg.msg_iov = &_out[first];
            msg.msg_iovlen = n;
            sent = co_await send_msg(_fd, &msg);
        }
        if (!sent) {
            co_return sent.error();
        }
        _counters.bytes_out.add(*sent);
        _activity += *sent;
        // Drop what went out; a short send leaves the rest of an iovec.
        for (std::size_t left = *sent; left > 0;) {
            iovec& v = _out[first];
            const std::size_t take = std::min(left, v.iov_len);
            v.iov_base = static_cast<std::byte*>(v.iov_base) + take;
            v.iov_len -= take;
            left -= take;
            if (v.iov_len == 0) {
                ++first;
            }
        }
    }
    _out.clear();
    release_done();
    co_return std::error_code{};
}

task<echo_end> echo_connection::run() {
    recv_stream rx(_fd, _buffers);
    bool eof = false;
    std::uint64_t pauses_seen = 0;
    struct release_on_exit {
        echo_connection& c;
        ~release_on_exit() {
            c._out.clear();
            while (!c._held.empty()) {
                c._buffers.release(c._held.front().bid);
                c._held.pop_front();
            }
            c._held_bytes = 0;
        }
    } guard{*this};

    // The stream takes no more than max_pending minus what the connection
    // holds: the kernel stops the multishot receive there.
    auto budget = [&] { return _opts.max_pending > _held_bytes ? _opts.max_pending - _held_bytes : 0; };
    while (!eof || rx.has_ready()) {
        rx.limit_unread(budget());
        bool starved = false;
        // One completion (waiting for it if none is there), then every
        // completion already there, so that one send carries them all.
        do {
            auto r = co_await rx.next();
            if (!r) {
                if (r.error() == std::errc::no_buffer_space) {
                    _counters.enobufs.add();
                    starved = true;
                    break;
                }
                co_return echo_end::error;
            }
            if (r->data.empty()) {
                eof = true;
                break;
            }
            if (!absorb(r->data.data(), static_cast<std::uint32_t>(r->data.size()), r->buffer_id)) {
                spdlog::warn("closing connection from {}: {}", peer_name(_fd), _protocol_error);
                co_return echo_end::protocol_error;
            }
        } while (rx.has_ready());

        if (!_out.empty()) {
            rx.limit_unread(budget());
            if (_held_bytes >= _opts.max_pending) {
                rx.pause();
            }
            if (auto ec = co_await flush()) {
                co_return echo_end::error;
            }
        } else {
            release_done();
        }
        if (rx.pauses() != pauses_seen) {
            _counters.backpressure_pauses.add(rx.pauses() - pauses_seen);
            pauses_seen = rx.pauses();
        }
        if (starved) {
            // The ring ran dry: our own buffers went back above; wait for
            // others' before the next receive re-arms.
            co_await _buffers.available();
        }
    }
    co_return echo_end::closed;
}

}  // namespace shardd::server

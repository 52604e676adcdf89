#pragma once
// One echo connection: bytes in, the same bytes out, from the same buffers.
//
// A multishot receive fills buffers of the shard's provided buffer ring;
// each received buffer is sent back as it is (raw), or the parts of it that
// sockperf asks to have back (sockperf), gathered into one sendmsg with the
// other buffers that arrived meanwhile, and handed back to the ring once
// sent. One send is in flight at a time, so bytes leave in the order they
// came; short sends continue where they stopped.
//
// Backpressure: bytes received but not yet sent back (held buffers plus
// completions not yet looked at) stay within max_pending plus one buffer.
// Each multishot receive is armed with the byte limit the connection may
// still take, and the kernel ends it there; once over, the receive pauses
// and takes one buffer per request until the socket's queue is drained, so
// the peer's TCP window closes instead of the shard's buffers filling up.
// Kernels without the multishot byte limit fall back to cancelling the
// receive when the limit is crossed, which lands after what the kernel
// already moved in that io_uring_enter (rounds of up to 32 buffers).

#include "config/config.hh"
#include "server/counters.hh"
#include "server/sockperf_framing.hh"

#include "reactor/buffer_ring.hh"
#include "reactor/task.hh"

#include <deque>
#include <optional>
#include <string>
#include <sys/uio.h>
#include <vector>

namespace shardd::server {

struct echo_options {
    config::echo_protocol protocol = config::echo_protocol::raw;
    std::size_t max_pending = 256 * 1024;
    std::uint64_t max_message = 64 * 1024;
};

// How a connection ended, for counters and logs.
enum class echo_end {
    closed,          // the peer shut down its side: echoed all, shut down ours
    error,           // reset, broken pipe, or another socket error
    protocol_error,  // not sockperf framing: closed with a logged reason
};

class echo_connection {
public:
    echo_connection(int fd, buffer_ring& buffers, const echo_options& opts, shard_counters& counters);

    // Serves until the peer closes or fails. Does not close the fd.
    task<echo_end> run();

    // Grows with every byte in or out: the idle sweep compares snapshots.
    std::uint64_t activity() const noexcept { return _activity; }
    int fd() const noexcept { return _fd; }

private:
    struct held {
        std::uint16_t bid;
        std::uint32_t len;
    };
    // Takes one received buffer: keeps it, and queues what to send back.
    // Returns false on a protocol error.
    bool absorb(std::byte* data, std::uint32_t len, std::uint16_t bid);
    // Sends everything queued; releases the buffers no longer needed.
    task<std::error_code> flush();
    void release_done();

    int _fd;
    buffer_ring& _buffers;
    echo_options _opts;
    shard_counters& _counters;
    std::optional<sockperf_framing> _framing;
    std::deque<held> _held;
    std::size_t _held_bytes = 0;
    std::vector<iovec> _out;
    std::uint64_t _activity = 0;
    std::string _protocol_error;
};

}  // namespace shardd::server

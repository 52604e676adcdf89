#pragma once
// One echo connection: bytes in, the same bytes out, from the same buffers
// while the peer keeps up, from the connection's own memory when it does not.
//
// The shard's receive buffers are a pool that every connection shares, so
// no connection may keep them while it waits on its peer. A round:
//
//   1. next(): a multishot receive fills pool buffers; the round takes every
//      completion already there (up to max_batch_buffers).
//   2. raw: every buffer goes back as it is; sockperf: the replies' byte
//      ranges (sockperf_framing; a header cut by a segment boundary is
//      copied, never kept in its buffer).
//   3. One sendmsg with MSG_DONTWAIT of all of it: it completes in the same
//      io_uring_enter, with what fitted in the socket's send buffer.
//   4. All sent: the buffers go back to the pool. Short (the peer reads
//      slower than it writes): the rest is copied into `_spill`, the
//      buffers go back, and the receive is paused (and waited for: the
//      kernel lets go of it) before the connection waits on its peer with
//      a blocking send of the spill. What arrived before the pause joins the
//      spill. Once it is all out, receiving resumes.
//
// So pool buffers are held from a receive's completion to the end of the
// same round, never across a wait on the peer: a peer that does not read
// (or trickles a byte per segment, or sends half a header) holds no pool
// buffer, and the receive is never armed while its connection cannot send.
// Its own memory, `_spill`, holds at most max_pending bytes (plus one round
// on kernels without the multishot byte limit): each receive is armed only
// with nothing spilled, with max_pending as its byte limit.

#include "config/config.hh"
#include "server/counters.hh"
#include "server/peer_log.hh"
#include "server/sockperf_framing.hh"

#include "reactor/abort_source.hh"
#include "reactor/buffer_ring.hh"
#include "reactor/recv_stream.hh"
#include "reactor/task.hh"

#include <memory>
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
    closed,          // the peer shut down its side: echoed all
    error,           // reset, broken pipe, or another socket error
    protocol_error,  // not sockperf framing: sent what was owed, logged why
    aborted,         // abort(): the idle sweep or the drain ended it
};

class echo_connection {
public:
    echo_connection(int fd, buffer_ring& buffers, const echo_options& opts, shard_counters& counters, peer_log& log);
    echo_connection(const echo_connection&) = delete;
    echo_connection& operator=(const echo_connection&) = delete;

    // Serves until the peer closes or fails, or abort(). Returns with
    // nothing of the connection left in the kernel (its receive stopped,
    // its sends done) and no pool buffer held, so the caller may close the
    // socket at once. Does not close it.
    task<echo_end> run();

    // Ends whatever the connection waits for (a receive, a send to a peer
    // that does not read, free buffers); run() then returns `aborted`.
    void abort() noexcept { _abort.request_abort(); }

    // Grows with every byte in or out: the idle sweep compares snapshots.
    std::uint64_t activity() const noexcept { return _activity; }
    int fd() const noexcept { return _fd; }
    // Bytes in the connection's own memory, waiting for the peer.
    std::size_t spilled() const noexcept { return _spill_len; }

private:
    // Takes one received buffer: keeps it for this round and queues what to
    // send back. Returns false on a protocol error.
    bool absorb(std::byte* data, std::uint32_t len, std::uint16_t bid);
    // Sends what this round queued, or spills it (see above).
    task<std::error_code> send_round(recv_stream& rx);
    // Copies _out[first..] (after `skip` bytes of it) into the spill.
    void spill(std::size_t first);
    // Sends the spill, waiting for the peer as long as it takes.
    task<std::error_code> send_spill();
    // The end of a round: pool buffers back, nothing queued.
    void end_round() noexcept;
    void log_protocol_error();

    int _fd;
    buffer_ring& _buffers;
    echo_options _opts;
    shard_counters& _counters;
    peer_log& _log;
    abort_source _abort;
    std::optional<sockperf_framing> _framing;
    // This round's buffers and what to send of them.
    std::vector<std::uint16_t> _held;
    std::vector<iovec> _out;
    header_copies _header_copies;
    // The connection's own memory: bytes the peer has not taken yet.
    // Allocated when first needed, freed once sent (an idle connection holds
    // none).
    std::unique_ptr<std::byte[]> _spill;
    std::size_t _spill_len = 0;
    std::size_t _spill_cap = 0;
    std::uint64_t _activity = 0;
    std::string _protocol_error;
};

}  // namespace shardd::server

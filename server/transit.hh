#pragma once
// A transit: bytes in from one socket, the same bytes out to another (or to
// the same one: an echo), from the same buffers while the receiver keeps
// up, from the transit's own memory when it does not. An echo connection is
// one transit (fd to itself); a proxied pair is two (client to upstream,
// upstream to client).
//
// The shard's receive buffers are a pool that every connection shares, so
// no transit may keep them while it waits on its receiver. A round:
//
//   1. next(): a multishot receive fills pool buffers; the round takes every
//      completion already there (up to max_batch_buffers).
//   2. raw: every buffer goes out as it is; sockperf (echo only): the
//      replies' byte ranges (sockperf_framing; a header cut by a segment
//      boundary is copied, never kept in its buffer).
//   3. One sendmsg with MSG_DONTWAIT of all of it: it completes in the same
//      io_uring_enter, with what fitted in the socket's send buffer.
//   4. All sent: the buffers go back to the pool. Short (the receiver reads
//      slower than the sender writes): the rest is copied into `_spill`, the
//      buffers go back, and the receive is paused (and waited for: the
//      kernel lets go of it) before the transit waits on its receiver with
//      a blocking send of the spill. What arrived before the pause joins the
//      spill. Once it is all out, receiving resumes.
//
//   5. Raw bytes only: all sent, and a receive of the round filled a whole
//      pool buffer (a bulk stream): the receive is paused and the stream
//      goes on with splice(2) through a pipe, without a copy, until four
//      receives in a row are shorter than a buffer (splice_pipes.hh,
//      relay_spliced()). The pipe holds at most max_pending bytes, and
//      nothing more is read while the receiver does not take them.
//
// So pool buffers are held from a receive's completion to the end of the
// same round, never across a wait on the receiver: a receiver that does not
// read (or a sender that trickles a byte per segment, or sends half a
// header) holds no pool buffer, and the receive is never armed while its
// transit cannot send. Its own memory, `_spill`, holds at most max_pending
// bytes (plus one round on kernels without the multishot byte limit): each
// receive is armed only with nothing spilled, with max_pending as its byte
// limit. So when the receiver stops reading, the transit stops receiving, and
// the sender's TCP window closes.

#include "config/config.hh"
#include "server/counters.hh"
#include "server/peer_log.hh"
#include "server/served_connection.hh"
#include "server/sockperf_framing.hh"
#include "server/splice_pipes.hh"

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

// One round's working lists: the pool buffers it holds and the byte ranges
// it sends. Borrowed from the shard for the length of a round, so that an
// idle connection carries neither (two allocations and 48 bytes each;
// issue 13: at most 1 KiB per idle connection). A shard needs as many as it
// has rounds waiting on a send at once, and keeps them.
struct round_scratch {
    std::vector<std::uint16_t> held;
    std::vector<iovec> out;
};

// What every transit of a shard shares.
class transit_env {
public:
    transit_env(buffer_ring& buffers, shard_counters& counters, peer_log& log, splice_pipes* pipes = nullptr)
        : buffers(buffers), counters(counters), log(log), pipes(pipes) {}
    transit_env(const transit_env&) = delete;
    transit_env& operator=(const transit_env&) = delete;

    round_scratch* take_scratch();
    // Back to the shard, emptied (its capacity kept for the next round).
    void give_scratch(round_scratch* s) noexcept;
    std::size_t scratch_count() const noexcept { return _all.size(); }

    buffer_ring& buffers;
    shard_counters& counters;
    peer_log& log;
    // Pipes for spliced relays (splice_pipes.hh); null: always copy.
    splice_pipes* pipes;

private:
    std::vector<std::unique_ptr<round_scratch>> _all;
    std::vector<round_scratch*> _free;
};

struct transit_options {
    config::echo_protocol protocol = config::echo_protocol::raw;
    std::size_t max_pending = 256 * 1024;
    std::uint64_t max_message = 64 * 1024;
    // Relay bulk streams with splice(2) (raw bytes only: sockperf needs to
    // see them).
    bool splice = true;
};

// How a transit ended, for counters, logs and the proxy's next step.
enum class transit_end {
    closed,          // the sender shut down its side, and all of it went out
    recv_error,      // receiving failed: the sender reset, or another error
    send_error,      // sending failed: the receiver reset (broken pipe), or another error
    protocol_error,  // not sockperf framing: sent what was owed, logged why
    aborted,         // abort(): the idle sweep, the drain or the proxy ended it
};

class transit final : public served_connection {
public:
    // Receives from `in_fd` and sends to `out_fd` (the same fd: an echo).
    transit(int in_fd, int out_fd, transit_env& env, const transit_options& opts);
    transit(const transit&) = delete;
    transit& operator=(const transit&) = delete;

    // Runs until the sender closes (all sent), a socket fails, or abort().
    // Returns with nothing of the transit left in the kernel (its receive
    // stopped, its sends done) and no pool buffer held, so the caller may
    // close the sockets at once. Closes nothing, shuts nothing down.
    task<transit_end> run();

    // Ends whatever the transit waits for (a receive, a send to a receiver
    // that does not read, free buffers); run() then returns `aborted`.
    void abort() noexcept override { _abort.request_abort(); }

    // Grows with every byte in or out: the idle sweep compares snapshots.
    std::uint64_t activity() const noexcept override { return _activity; }
    // Bytes sent to out_fd so far.
    std::uint64_t bytes_sent() const noexcept { return _sent; }
    std::uint64_t bytes_received() const noexcept { return _activity - _sent; }
    // Bytes in the transit's own memory, waiting for the receiver.
    std::size_t spilled() const noexcept { return _spill_len; }
    // Why run() ended in recv_error or send_error.
    std::error_code error() const noexcept { return _error; }

private:
    // Takes one received buffer: keeps it for this round and queues what to
    // send back. Returns false on a protocol error.
    bool absorb(std::byte* data, std::uint32_t len, std::uint16_t bid);
    // Sends what this round queued, or spills it (see above). All sent and
    // the stream bulk: relays with splice(2) from there (relay_spliced()),
    // setting `eof` or `end` when the stream ended that way.
    task<std::error_code> send_round(recv_stream& rx, std::optional<transit_end>& end, bool& eof);
    // Copies _out[first..] (after `skip` bytes of it) into the spill.
    void spill(std::size_t first);
    // Whether a round that sent everything goes on spliced: the stream is
    // bulk (consumes that), splicing is allowed, it has not ended, and no
    // completion waits to be taken first.
    bool splice_next(const recv_stream& rx, bool eof, const std::optional<transit_end>& end) noexcept;
    // Pauses the receive and relays with splice(2) through a pipe of the
    // shard's, until the stream stops being bulk (copy: receive again), the
    // sender shuts down (eof), or it ends (`end` says how). copy at once
    // when there is no pipe, or bytes that arrived before the pause must go
    // first.
    enum class splice_exit : std::uint8_t { copy, eof, ended };
    task<splice_exit> relay_spliced(recv_stream& rx, std::optional<transit_end>& end);
    // Sends the spill, waiting for the peer as long as it takes.
    // With the stream's receive, end and eof (run()'s loop): then, if the
    // stream is bulk, goes on with splice(2) as send_round() does.
    task<std::error_code> send_spill(recv_stream* rx = nullptr, std::optional<transit_end>* end = nullptr,
                                     bool* eof = nullptr);
    // The end of a round: pool buffers back, nothing queued.
    void end_round() noexcept;
    void log_protocol_error();
    // The end for a failed operation: `aborted` for a cancellation, else
    // `what`, keeping `ec` for error().
    transit_end failed(std::error_code ec, transit_end what) noexcept;

    int _in_fd;
    int _out_fd;
    transit_env& _env;
    // Of the options, only this outlives the constructor (an idle
    // connection carries every byte here: 32 bits, as config caps it at
    // 1 GiB, and the flags below share its 8 bytes).
    std::uint32_t _max_pending;
    // Splice allowed here (raw bytes, the listener's `splice`), a round
    // took a whole pool buffer (the stream is bulk: splice next), and the
    // sockets were made non-blocking for splice(2).
    bool _splice_allowed;
    bool _bulk_seen = false;
    bool _nonblocking = false;
    abort_source _abort;
    // The sockperf protocol's state, on the heap and only for a sockperf
    // listener: a raw transit (an echo, either direction of a proxied pair)
    // should not carry ~200 bytes it never uses, nor the ~580 that a
    // libstdc++ deque allocates when constructed.
    struct sockperf_state {
        explicit sockperf_state(std::uint64_t max_message) : framing(max_message) {}
        sockperf_framing framing;
        header_copies copies;
        std::string error;  // why the stream is not sockperf
    };
    std::unique_ptr<sockperf_state> _sockperf;
    // This round's buffers and what to send of them; null between rounds.
    round_scratch* _round = nullptr;
    // The connection's own memory: bytes the peer has not taken yet.
    // Allocated when first needed, freed once sent (an idle connection holds
    // none).
    std::unique_ptr<std::byte[]> _spill;
    std::size_t _spill_len = 0;
    std::size_t _spill_cap = 0;
    std::uint64_t _activity = 0;
    std::uint64_t _sent = 0;
    std::error_code _error;
};

}  // namespace shardd::server

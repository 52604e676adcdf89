#pragma once
// Per-shard service counters. Written only by their shard, read by others
// (the main thread at exit, the admin endpoint later).

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

namespace shardd::server {

// A counter with one writer. add() is a relaxed load and store, not a locked
// read-modify-write: on x86 it compiles to a plain add, and readers on other
// cores still see whole values (never torn), a little late at worst.
class shard_counter {
public:
    void add(std::uint64_t n = 1) noexcept {
        _v.store(_v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    // For copies of a count kept elsewhere, and gauges.
    void set(std::uint64_t v) noexcept { _v.store(v, std::memory_order_relaxed); }
    std::uint64_t get() const noexcept { return _v.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> _v{0};
};

// alignas(64): one cache line (or more) per shard, so that a shard bumping
// its counters never invalidates the line holding another shard's, and a
// reader on another core only ever pulls lines, never fights over them.
struct alignas(64) shard_counters {
    shard_counter accepted;
    shard_counter closed;
    // Accepted and closed at once: the listener was at max_connections.
    shard_counter refused;
    shard_counter bytes_in;
    shard_counter bytes_out;
    // Receives that found the shard's buffer ring empty (-ENOBUFS).
    shard_counter enobufs;
    // Times a connection stopped receiving because its peer did not take
    // what it sent back (or, on kernels without the multishot byte limit,
    // because it reached max_pending).
    shard_counter backpressure_pauses;
    // accept() failed for lack of file descriptors or memory: timer back-off.
    shard_counter accept_backoffs;
    shard_counter idle_closed;
    // Connections that ended in an error (reset, broken pipe) or broke the
    // protocol.
    shard_counter errors;
    // Of those, the ones that broke the protocol (sockperf framing).
    shard_counter protocol_errors;
    // Peer-caused log lines left out by the rate limit (peer_log).
    shard_counter log_suppressed;
    // Access log lines dropped: the target was too slow or gone.
    shard_counter access_log_dropped;
    // Bytes a peer did not take at once, copied out of the receive pool
    // into their connection's own memory (see transit.hh).
    shard_counter bytes_spilled;
    // Bytes relayed with splice(2) instead of through the receive pool (of
    // bytes_in; see splice_pipes.hh).
    shard_counter bytes_spliced;

    std::uint64_t active() const noexcept { return accepted.get() - closed.get(); }
    std::string summary() const;
};

}  // namespace shardd::server

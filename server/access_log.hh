#pragma once
// The access log: one line per closed connection, text or JSON, to stderr
// (the journal under systemd) or to a file that SIGUSR1 reopens.
//
// Each shard has its own writer and buffer: a closing connection appends a
// line to memory and never waits. The shard writes the buffer with an
// io_uring write (never a blocking write(2): a full pipe or a slow disk
// stalls the write, not the shard) when it holds flush_bytes, and at least
// every heartbeat (100 ms). While one write is in flight the next buffer
// fills; past max_buffered bytes lines are dropped and counted. Writes to a
// pipe are cut at line boundaries below PIPE_BUF, so that the shards' lines
// never interleave mid-line; a file is opened O_APPEND, where each write
// lands whole at its end.

#include "config/config.hh"
#include "server/counters.hh"

#include "reactor/event.hh"
#include "reactor/socket_address.hh"
#include "reactor/task.hh"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace shardd::server {

// Flush once this much is buffered: a few hundred lines, one write.
inline constexpr std::size_t access_log_flush_bytes = 32 * 1024;
// A shard's cap on lines waiting for a slow target (a stuck pipe, a full
// disk): beyond it lines are dropped (counted), memory stays bounded.
inline constexpr std::size_t access_log_max_buffered = 1024 * 1024;

// How a connection ended, as the access log says it.
namespace ended {
inline constexpr std::string_view client_fin = "client_fin";
inline constexpr std::string_view client_rst = "client_rst";
inline constexpr std::string_view server_fin = "server_fin";
inline constexpr std::string_view server_rst = "server_rst";
inline constexpr std::string_view idle_timeout = "idle_timeout";
inline constexpr std::string_view half_close_timeout = "half_close_timeout";
inline constexpr std::string_view shutdown = "shutdown";
inline constexpr std::string_view refused = "refused";  // max_connections
inline constexpr std::string_view no_server = "no_server";
inline constexpr std::string_view queue_full = "queue_full";
inline constexpr std::string_view queue_timeout = "queue_timeout";
inline constexpr std::string_view protocol_error = "protocol_error";
inline constexpr std::string_view denied = "denied";              // allow / deny
inline constexpr std::string_view source_limit = "source_limit";  // per-source limits
inline constexpr std::string_view proxy_header = "proxy_header";  // untrusted, missing or bad header
}  // namespace ended

struct access_record {
    std::string_view listener;
    std::optional<socket_address> client;
    std::optional<socket_address> server;  // proxy listeners
    std::uint64_t bytes_from_client = 0;
    std::uint64_t bytes_to_client = 0;
    std::chrono::nanoseconds duration{0};
    std::string_view end;
};

// What a connection's line needs from its start: when, and from whom.
// getpeername(2) runs only while the log is on, and at the start: after a
// reset it fails.
// Lives in every connection's coroutine frame, so it is 16 bytes, not the
// 150 of an inline socket_address: the address is on the heap, and only
// while the log is on (issue 13: at most 1 KiB per idle connection).
struct access_start {
    // `client`: the address a PROXY header gave, if any (else the peer's).
    access_start(const class access_log* log, int fd, const socket_address* client = nullptr);
    // A record with the listener, the client and the duration until now.
    access_record record(std::string_view listener) const;

    std::chrono::steady_clock::time_point at;
    std::unique_ptr<socket_address> client;
};

// A new file descriptor for the shards' writers (SIGUSR1), one slot per
// shard. alignas(64): written by the main thread, read by one shard.
struct alignas(64) access_log_reopen {
    std::atomic<int> fd{-1};
};

// One shard's writer. Lives on the shard's thread.
class access_log {
public:
    // Takes `fd` (closed when replaced or at the end).
    access_log(int fd, config::log_format format, access_log_reopen* reopen, shard_counter& dropped);
    ~access_log();
    access_log(const access_log&) = delete;
    access_log& operator=(const access_log&) = delete;

    // Appends the record's line; starts a write at flush_bytes.
    void record(const access_record& r);
    // Writes what is buffered (the heartbeat calls it), and takes a reopened
    // file descriptor if the main thread left one.
    void flush();
    // The writer task: spawn once, await at the end (after stop()).
    task<void> run();
    // Asks run() to write what is left and end.
    void stop();

    // The line for `r`, as record() writes it (tests, the fuzz of escaping).
    static std::string format_line(const access_record& r, config::log_format format,
                                   std::chrono::system_clock::time_point at);

private:
    int _fd;
    bool _pipe_like;  // not a regular file: cut writes below PIPE_BUF
    config::log_format _format;
    access_log_reopen* _reopen;
    shard_counter& _dropped;
    std::string _buffer;   // lines waiting
    std::string _writing;  // the buffer of the write in flight
    event _wake;
    bool _stopping = false;
};

}  // namespace shardd::server

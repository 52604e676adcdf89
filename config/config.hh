#pragma once
// The validated configuration: plain structs, no TOML types. Everything the
// daemon reads comes from here; docs/configuration.md documents every field,
// and the defaults below are the documented defaults.

#include "config/cidr.hh"
#include "config/units.hh"
#include "reactor/cpu_set.hh"
#include "reactor/socket_address.hh"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shardd::config {

inline constexpr std::uint64_t KiB = 1024;
inline constexpr std::uint64_t MiB = 1024 * KiB;
inline constexpr std::uint64_t GiB = 1024 * MiB;

using namespace std::chrono_literals;

enum class log_level { trace, debug, info, warn, error };
enum class log_format { text, json };
enum class listener_mode { echo, proxy };
enum class echo_protocol { raw, sockperf };
enum class balance_policy { round_robin, least_conn, random_two, source_hash };
// The PROXY protocol header (HAProxy's spec) sent to an upstream server.
enum class proxy_protocol_version { none, v1, v2 };
// The shards' I/O backend (runtime.backend); server/daemon.cc maps it to the
// reactor's backend_choice, which config/ does not include (it would pull in
// liburing).
enum class io_backend { automatic, io_uring, epoll };

struct runtime_config {
    // Empty means "all": every CPU in sched_getaffinity(0) at start-up.
    bool all_cpus = true;
    cpu_set cpus;
    // "auto": io_uring where the kernel and sandbox allow it, else epoll with
    // one warning. Auto by default so that the same file runs in a container
    // whose seccomp profile denies io_uring (Docker's default) instead of
    // failing to start there; "io_uring" is for hosts that must not run
    // slower without saying so, and refuses to start instead.
    io_backend backend = io_backend::automatic;
    // Registered fixed-buffer arena per shard. 4 MiB is locked memory per
    // shard; small enough for a default RLIMIT_MEMLOCK of 8 MiB on one or two
    // shards, large enough for a few hundred in-flight fixed-buffer ops.
    std::uint64_t io_memory = 4 * MiB;
    // SQ entries per ring (power of two). 1024 lets one loop iteration batch a
    // thousand sends before it must call io_uring_enter.
    std::uint32_t ring_entries = 1024;
    // Busy-poll this long before sleeping. Off by default: spinning trades a
    // whole core for a few microseconds of wake-up latency.
    duration spin_before_park = 0ns;
    // Preemption timer for throughput task queues: how long a task may run
    // before a latency-sensitive one gets the CPU. Seastar's task quota.
    duration preempt_timer = 500us;
    // Log a task that holds the CPU longer than this (0 disables).
    duration stall_threshold = 50ms;
    // Graceful drain: how long open connections may finish after SIGTERM.
    duration shutdown_timeout = 10s;
    // Provided buffer ring for multishot recv, per shard: buffers of this
    // size, this many (a power of two, the kernel's limit is 32768). 16 MiB
    // in all. 32 KiB rather than 16: a 64 KiB message is 2 completions and
    // 2 iovecs, not 4; 5 interleaved rounds on the 16 x 64 KiB cell gave
    // 18.5 against 20.9 us of server CPU per message, and the 64 B and 4 KiB
    // cells did not move (issue 13). The ring holds only the buffers in use
    // (hot buffers), so small messages do not touch the rest.
    std::uint64_t recv_buffer_size = 32 * KiB;
    std::uint32_t recv_buffers = 512;

    bool operator==(const runtime_config&) const = default;
};

struct log_config {
    log_level level = log_level::info;
    log_format format = log_format::text;

    bool operator==(const log_config&) const = default;
};

struct admin_config {
    // Absent: no admin endpoint.
    std::optional<socket_address> listen;

    bool operator==(const admin_config&) const = default;
};

// One line per closed connection (server/access_log.hh). Off by default.
struct access_log_config {
    // "" (off), "stderr" (the journal, under systemd), or an absolute path,
    // appended to and reopened on SIGUSR1 (logrotate's convention).
    std::string path;
    log_format format = log_format::text;

    bool operator==(const access_log_config&) const = default;
};

struct listener_config {
    std::string name;
    std::vector<socket_address> listen;
    listener_mode mode = listener_mode::echo;
    echo_protocol protocol = echo_protocol::raw;  // echo only
    std::string upstream;                         // proxy only
    // Per listener, over all shards together.
    std::uint64_t max_connections = 100000;
    duration idle_timeout = 300s;  // 0 disables
    // listen(2) backlog; the kernel caps it at net.core.somaxconn.
    std::uint32_t backlog = 4096;
    bool nodelay = true;
    // Bytes received but not yet sent back, per connection, before shardd
    // stops reading from that peer.
    std::uint64_t max_pending = 256 * KiB;
    // Relay bulk streams (raw echo, proxy) with splice(2): no copy through
    // the receive pool once a receive fills a whole buffer.
    bool splice = true;
    // Largest sockperf message accepted (header included). sockperf's own
    // largest payload is 65507 bytes.
    std::uint64_t max_message = 64 * KiB;
    // Proxy only: how long a pair may stay half-closed (one side has sent
    // its FIN, the other still sends) before both are closed; 0 disables.
    // HAProxy's timeout client-fin/server-fin. A minute lets a server finish
    // a long response after the client's FIN, and bounds how long a peer
    // that never sends its own FIN holds a connection.
    duration half_close_timeout = 60s;
    // Expect a PROXY protocol header (v1 or v2) first on every connection,
    // from a source in proxy_trusted only; its address is the client's from
    // then on (ACLs, source_hash, the access log, onward headers).
    bool accept_proxy = false;
    std::vector<cidr> proxy_trusted;
    // How long the header may take to arrive whole. A real proxy sends it
    // with its first packet; 5 s covers a slow link and bounds how long a
    // peer that sends nothing (or trickles) holds a connection slot.
    duration proxy_timeout = 5s;
    // Source ACLs: deny wins; with allow set, every other source is denied.
    std::vector<cidr> allow;
    std::vector<cidr> deny;
    // Per source address, over all shards together; 0: no limit.
    std::uint32_t max_connections_per_source = 0;
    // New connections per second per source address, as a token bucket
    // that holds one second's worth; 0: no limit.
    std::uint32_t connection_rate_per_source = 0;

    bool operator==(const listener_config&) const = default;
};

struct upstream_server {
    socket_address address;
    // Share of new connections, relative to the other servers' weights.
    std::uint32_t weight = 1;
    // Open connections to this server over all shards together; 0 is no
    // limit. A client over it waits in the upstream's queue.
    std::uint64_t max_connections = 0;
    // Gets traffic only while no primary (non-backup) server is up.
    bool backup = false;
    // No new connections; open ones finish (so does weight = 0).
    bool drain = false;
    // Overrides the upstream's proxy_protocol for this server.
    std::optional<proxy_protocol_version> proxy_protocol;

    bool operator==(const upstream_server&) const = default;
};

// Active health checks: a TCP connect every interval, or with send/expect
// a request and the start of its reply. Absent (enabled false): passive
// health alone. Defaults as HAProxy's (inter 2s, rise 2, fall 3).
struct health_check_config {
    bool enabled = false;
    duration interval = 2s;
    // Per check, connect to reply; at most interval.
    duration timeout = 1s;
    std::uint32_t rise = 2;  // passing checks in a row that bring a server up
    std::uint32_t fall = 3;  // failing checks in a row that take it down
    std::string send;        // bytes, escapes decoded
    std::string expect;      // the reply must start with these bytes

    bool operator==(const health_check_config&) const = default;
};

struct upstream_config {
    std::string name;
    balance_policy balance = balance_policy::round_robin;
    std::vector<upstream_server> servers;
    duration connect_timeout = 2s;
    // Other servers tried after a refused or timed-out connect. Two covers a
    // server that just went down plus one more, without turning one dead
    // pool into a long wait for every client: all tries take at most
    // (retries + 1) x connect_timeout.
    std::uint32_t retries = 2;
    // Passive health, nginx's semantics and defaults: max_fails failed
    // connects within fail_timeout mark a server down for fail_timeout
    // (max_fails 0: never).
    std::uint32_t max_fails = 1;
    duration fail_timeout = 10s;
    // Clients waiting for a server under its max_connections, per shard,
    // and how long each may wait. The queue is bounded so that a pool at its
    // limit costs a bounded number of descriptors; 1024 per shard is far
    // above any max_connections worth queueing behind, and a client over it
    // is closed at once, counted.
    std::uint32_t max_queue = 1024;
    duration queue_timeout = 5s;
    proxy_protocol_version proxy_protocol = proxy_protocol_version::none;
    health_check_config health_check;

    bool operator==(const upstream_config&) const = default;
};

struct config {
    runtime_config runtime;
    log_config log;
    admin_config admin;
    access_log_config access_log;
    std::vector<listener_config> listeners;
    std::vector<upstream_config> upstreams;

    const upstream_config* find_upstream(std::string_view name) const;
};

std::string_view to_string(log_level);
std::string_view to_string(log_format);
std::string_view to_string(listener_mode);
std::string_view to_string(echo_protocol);
std::string_view to_string(balance_policy);
std::string_view to_string(proxy_protocol_version);
std::string_view to_string(io_backend);

// The CPUs the shards run on: runtime.cpus resolved against the allowed set.
cpu_set effective_cpus(const config& cfg, const cpu_set& allowed);

}  // namespace shardd::config

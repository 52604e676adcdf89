#pragma once
// The admin endpoint: HTTP/1.1 on `admin.listen`, served by a thread of its
// own with its own executor and ring, never by a shard. The data path does
// not wait for it: it reads what the shards publish (single-writer counters,
// relaxed loads; a heartbeat per shard) and writes nothing they read.
//
//   GET /metrics   Prometheus text format 0.0.4 (server/admin/metrics.cc)
//   GET /healthz   200 while every shard's heartbeat is fresh, else 503
//                  naming the shards that are late
//   GET /readyz    200 while serving; 503 while starting or draining
//   GET /stats     the same numbers as /metrics, as JSON
//   GET /config    the effective configuration as TOML (--print-config)
//
// HEAD works wherever GET does; other methods get 405. Requests are parsed
// by http_request_parser (400, 413, 414, 431, 505), with a deadline for a
// whole request head and one for an idle keep-alive connection, and at most
// max_admin_connections at once.

#include "config/config.hh"
#include "server/counters.hh"
#include "server/heartbeat.hh"
#include "server/live_config.hh"
#include "server/proxy/upstream.hh"
#include "server/reactor_stats.hh"

#include "reactor/expected.hh"
#include "reactor/socket_address.hh"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace shardd::server::admin {

// How long a request head may take to arrive, from its first byte: a client
// that trickles a header a byte at a time is closed at this bound (like
// nginx's client_header_timeout, 60 s; ours is shorter, as no admin client
// is slow on loopback or a LAN).
inline constexpr auto header_timeout = std::chrono::seconds(10);
// How long a keep-alive connection may wait for its next request. Prometheus
// scrapes every 15-60 s over one connection: above that.
inline constexpr auto keep_alive_timeout = std::chrono::seconds(75);
// Admin connections at once; more are answered 503 and closed. Scrapers,
// health checks and an operator's curl: a handful.
inline constexpr std::size_t max_admin_connections = 64;

enum class daemon_phase : int { starting, ready, draining };

// What the endpoint reads. Owned by the daemon, alive until stop().
struct admin_sources {
    const live_config* live = nullptr;  // the configuration in effect
    const std::vector<shard_counters>* counters = nullptr;
    const std::vector<shard_heartbeat>* heartbeats = nullptr;
    const std::vector<reactor_stats>* reactors = nullptr;
    const std::atomic<daemon_phase>* phase = nullptr;
    std::chrono::system_clock::time_point started;
    std::string backend;     // "io_uring" or "epoll", as logged at start
    std::string ring_flags;  // shard 0's main ring, as logged at start ("" on epoll)
    // The shards' CPUs: the admin thread keeps off them where the process
    // may run elsewhere, so that rendering a scrape never takes a shard's
    // CPU (on a machine with a shard on every CPU it shares them).
    cpu_set shard_cpus;
};

class admin_server {
public:
    // Binds `addr` (errors say why), then starts the thread.
    static expected<std::unique_ptr<admin_server>, std::string> start(const socket_address& addr,
                                                                      admin_sources sources);
    ~admin_server();  // stop()
    admin_server(const admin_server&) = delete;
    admin_server& operator=(const admin_server&) = delete;

    // Where it listens (the port, when the config asked for 0).
    const socket_address& address() const noexcept { return _address; }
    // Closes the listener and every admin connection, and joins the thread.
    void stop();

private:
    admin_server() = default;
    socket_address _address;
    int _stop_fd = -1;
    std::thread _thread;
};

}  // namespace shardd::server::admin

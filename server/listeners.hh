#pragma once
// Listening sockets for every [[listener]], one per shard and address,
// bound by the main thread before the shards start (so that a port in use
// fails the start with a clear message, before READY=1).
//
// Every shard gets its own socket on the same address (SO_REUSEPORT): the
// kernel hashes each new connection to one of them, and that shard alone
// serves it. Port 0 (tests): the first socket binds, the others take the
// port it got. Under socket activation shard 0 takes systemd's socket.

#include "config/config.hh"
#include "server/counters.hh"
#include "server/socket_activation.hh"

#include "reactor/owned_fd.hh"

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace shardd::server {

class source_table;

// One listener's counters on one shard (single writer: that shard). Its
// own cache line per shard.
struct alignas(64) listener_counters {
    shard_counter accepted;
    shard_counter closed;
    shard_counter refused;            // at max_connections
    shard_counter idle_closed;        // by idle_timeout
    shard_counter errors;             // a reset, a broken pipe, a protocol error
    shard_counter denied;             // by allow / deny
    shard_counter source_limited;     // over max_connections_per_source or connection_rate_per_source
    shard_counter source_table_full;  // admitted uncounted: the source table was full
    shard_counter proxy_rejected;     // untrusted peer, or a missing, bad or late PROXY header
};

// State one listener shares between its shards: the connection count that
// max_connections bounds for the listener as a whole, touched once per
// accept and per close, never per byte (alignas(64) keeps it off the lines
// of anything a shard writes per message); and each shard's counters of
// the listener. The daemon keeps it until exit, so that the admin endpoint
// can read a listener a reload removed, and a connection's slot outlives it.
//
// The source table (per-source limits, source_table.hh) is made by the main
// thread when a configuration first sets a limit on the listener, before
// the shards are told of that configuration, and kept with the listener.
struct alignas(64) listener_shared {
    explicit listener_shared(std::size_t shards) : per_shard(std::make_unique<listener_counters[]>(shards)) {}
    std::atomic<std::uint64_t> connections{0};
    std::unique_ptr<listener_counters[]> per_shard;
    // shared_ptr: its deleter is bound where it is made, so that code that
    // only counts connections need not link the table.
    std::shared_ptr<source_table> sources;
};

struct bound_listener {
    const config::listener_config* cfg = nullptr;
    std::vector<socket_address> addresses;    // as bound: port 0 resolved
    std::vector<std::vector<owned_fd>> fds;   // [shard][address]; a shard takes its own
    std::shared_ptr<listener_shared> shared;  // made for `shards`
};

// Binds each of `listeners` on `shards` sockets per address. A socket systemd
// passed (socket_activation.hh) that matches an address, or is named after
// the listener, serves as shard 0's; the others bind beside it. Sockets that
// match no listener are closed, with a warning. On failure says which
// listener and address failed (what it opened is closed with it).
expected<std::vector<bound_listener>, std::string>
bind_listeners(const std::vector<const config::listener_config*>& listeners, std::size_t shards,
               std::vector<inherited_socket>& inherited);

}  // namespace shardd::server

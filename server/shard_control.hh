#pragma once
// What the main thread tells a shard once it runs: drain, or take a new
// configuration (SIGHUP). The main thread fills the shard's mailbox and
// writes its eventfd; the shard reads the eventfd from a task of its own,
// empties the mailbox (acquire), applies it on its own thread, and
// acknowledges a reload on a shared eventfd. Nothing here is touched per
// connection.

#include "config/config.hh"
#include "server/listeners.hh"
#include "server/proxy/upstream.hh"

#include "reactor/owned_fd.hh"

#include <atomic>
#include <memory>
#include <vector>

namespace shardd::server {

// One listener of a configuration, for one shard.
struct listener_update {
    const config::listener_config* cfg = nullptr;  // inside the plan's generation
    std::shared_ptr<listener_shared> shared;       // max_connections over all shards
    // New sockets for this shard (a new listener, or one whose addresses
    // changed): they replace the running listener of that name, which
    // retires. Empty: keep the sockets the shard has, take the rest of cfg.
    std::vector<owned_fd> fds;
    bool rebind = false;
};

// A configuration for one shard: every listener and upstream it has. A
// running listener that is not here retires: it stops accepting, and its
// connections finish.
struct shard_reload {
    std::shared_ptr<const config::config> generation;
    std::vector<listener_update> listeners;
    std::vector<std::shared_ptr<proxy::upstream_shared>> upstreams;
};

// alignas(64): one mailbox per shard, written by the main thread, read by
// its shard; kept off every other line.
struct alignas(64) shard_control {
    int wake_fd = -1;  // eventfd: the main thread writes 1 after filling the mailbox
    std::atomic<bool> drain{false};
    // A plan the main thread owns until the shard acknowledges it.
    std::atomic<shard_reload*> reload{nullptr};
};

}  // namespace shardd::server

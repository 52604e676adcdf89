#pragma once
// What runs, as the main thread keeps it: the configuration in effect, each
// listener's addresses and shared connection count, and each upstream's
// shared state. And how a configuration (the first, or one read on SIGHUP)
// becomes a plan for every shard (shard_control.hh).
//
// A listener is known by its name. One whose `listen` did not change keeps
// its sockets: its connections and its accept queue are untouched, and the
// rest of its settings apply to new connections. One that is new, or whose
// addresses changed, gets new sockets on every shard (bound here, before
// any shard is told, so that a port in use fails the reload and changes
// nothing); under its old name, the running one retires.
//
// An upstream whose settings did not change keeps its state. One that
// changed gets a new generation (proxy::upstream_shared), whose servers
// keep their health and connection counts where the address stays.

#include "config/config.hh"
#include "server/listeners.hh"
#include "server/proxy/upstream.hh"
#include "server/shard_control.hh"
#include "server/socket_activation.hh"

#include "reactor/expected.hh"

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace shardd::server {

class live_config {
public:
    explicit live_config(std::size_t shards) : _shards(shards) {}

    // Plans that take every shard from what runs to `next`, one per shard.
    // Sockets systemd passed serve first (at start). On error nothing
    // changes: what was bound is closed, and the error says which listener
    // and address failed.
    expected<std::vector<shard_reload>, std::string> prepare(std::shared_ptr<const config::config> next,
                                                             std::vector<inherited_socket>& inherited);
    // What prepare() planned is what runs now.
    void commit();

    // The configuration in effect. Any thread (the admin endpoint's /config).
    std::shared_ptr<const config::config> current() const;
    // The current generation of every upstream, in config order. Any thread
    // (the admin endpoint reads their counters; generations live until exit).
    std::vector<std::shared_ptr<proxy::upstream_shared>> upstreams() const;
    // Every listener in effect, by name, in config order. Any thread.
    std::vector<std::pair<std::string, std::shared_ptr<listener_shared>>> listeners() const;

private:
    struct listener_record {
        std::vector<socket_address> listen;  // as configured
        std::shared_ptr<listener_shared> shared;
    };

    std::size_t _shards;
    // Guards _current, _listeners and _upstreams, which other threads read
    // (the main thread, their only writer, reads them without it); the rest is
    // the main thread's alone.
    mutable std::mutex _current_mutex;
    std::shared_ptr<const config::config> _current;
    std::map<std::string, listener_record> _listeners;
    std::map<std::string, std::shared_ptr<proxy::upstream_shared>> _upstreams;
    // What prepare() made, for commit().
    std::shared_ptr<const config::config> _next;
    std::map<std::string, listener_record> _next_listeners;
    std::map<std::string, std::shared_ptr<proxy::upstream_shared>> _next_upstreams;
    // Kept until exit: a connection's slot and a message between shards
    // may name them after their listener or upstream is gone (each a few
    // cache lines; only reloads that change a listener or upstream add).
    std::vector<std::shared_ptr<listener_shared>> _kept_shared;
    std::vector<std::shared_ptr<proxy::upstream_shared>> _kept_upstreams;
};

}  // namespace shardd::server

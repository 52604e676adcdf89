#pragma once
// SIGHUP: read the configuration file again and apply it without dropping a
// connection. What applies live: [log], every [[listener]] (new ones bound
// on every shard, removed ones retire, changed ones apply to new
// connections) and every [[upstream]] (connections proxied before keep
// their server). What needs a restart: [runtime], [admin] and
// [access_log]; a change
// there is refused, named in one log line, and the rest applies. A file
// with errors changes nothing.
//
// The main thread binds what is new, hands each shard its plan through its
// mailbox (shard_control.hh), and waits for every shard to say it applied
// it before it answers systemd READY=1.

#include "config/load.hh"
#include "server/live_config.hh"
#include "server/shard_control.hh"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace shardd::server {

// How long the main thread waits for every shard to apply a reload. A shard
// applies it in one pass of its loop; a shard that takes longer is stuck,
// which the watchdog and /healthz report on their own.
inline constexpr auto reload_ack_timeout = std::chrono::seconds(10);

// The keys of `next` that differ from `running` and need a restart
// ("runtime.cpus", "admin.listen").
std::vector<std::string> restart_only_changes(const config::config& running, const config::config& next);

struct reload_context {
    live_config* live = nullptr;
    std::vector<shard_control>* controls = nullptr;  // one per shard
    int ack_fd = -1;                                 // the shards count their acknowledgements here
    std::string config_path;
    config::overrides over;
    cpu_set shard_cpus;
    // Plans a shard did not acknowledge in time: it may still be applying
    // one, so they live until exit (only ever after a stuck shard).
    std::vector<std::unique_ptr<std::vector<shard_reload>>> unacknowledged;
};

// Reads the file again and applies what it can. Returns whether the new
// configuration runs (false: the running one stays, the log says why).
bool reload(reload_context& ctx);

// Hands every shard its plan and waits until all applied it, or the
// timeout passed (then says which shards did not). The plans must outlive
// the call.
bool send_to_shards(std::vector<shard_control>& controls, std::vector<shard_reload>& plans, int ack_fd);

}  // namespace shardd::server

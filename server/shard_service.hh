#pragma once
// What one shard serves: its share of every listener (its own listening
// sockets, multishot accept), the echo connections it accepted, their idle
// sweep, and the graceful drain.
//
// Nothing here is shared with other shards except each listener's
// connection count (listener_shared, once per accept and close).

#include "config/config.hh"
#include "server/access_log.hh"
#include "server/counters.hh"
#include "server/heartbeat.hh"
#include "server/listeners.hh"
#include "server/proxy/upstream.hh"
#include "server/reactor_stats.hh"
#include "server/shard_control.hh"

#include "reactor/task.hh"

#include <latch>
#include <string>
#include <vector>

namespace shardd::server {

// What a shard's executor runs on, for the start log and the admin
// endpoint. Shard 0's answer stands for every shard: what runtime.backend =
// "auto" picks depends on the kernel and the sandbox, which all the shards of
// a process share.
struct shard_backend {
    std::string name;             // "io_uring" or "epoll"
    std::string fallback_reason;  // why "auto" chose epoll; "" when it did not
    std::string ring_flags;       // the main ring's set-up flags; "" on epoll
};

struct shard_plan {
    unsigned id = 0;
    const config::runtime_config* runtime = nullptr;  // alive until the pool stops
    // The configuration to start with (listener sockets: this shard's).
    shard_reload* initial = nullptr;
    shard_counters* counters = nullptr;
    // The main thread's mailbox: drain, or a reload.
    shard_control* control = nullptr;
    // This shard writes 1 here once it applied a reload.
    int reload_ack_fd = -1;
    // This shard writes 1 here when it has drained and is done.
    int done_fd = -1;
    // Counted down once the shard serves (or failed to start: `error`).
    std::latch* up = nullptr;
    std::string* error = nullptr;
    // Written every heartbeat_period while the shard's loop runs.
    shard_heartbeat* heartbeat = nullptr;
    // Published with each heartbeat, for the admin endpoint.
    reactor_stats* reactor = nullptr;
    // The access log: this shard's own descriptor for it (-1: off), its
    // format, and the slot SIGUSR1's reopened descriptor comes through.
    int access_log_fd = -1;
    config::log_format access_log_format = config::log_format::text;
    access_log_reopen* access_reopen = nullptr;
    // Shard 0 says here what it runs on before it counts `up` down.
    shard_backend* backend = nullptr;
};

// Serves until drained. Returns when every connection has closed (or was
// closed at shutdown_timeout).
task<void> run_shard(shard_plan plan);

}  // namespace shardd::server

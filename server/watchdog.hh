#pragma once
// The systemd service watchdog (sd_watchdog_enabled(3) and sd_notify's
// "WATCHDOG=1", without libsystemd). With WatchdogSec= in the unit, systemd
// sets $WATCHDOG_USEC and kills and restarts the service when no WATCHDOG=1
// arrives within it.
//
// The main thread pings at half the interval (the margin sd_watchdog_enabled
// recommends), and only when every shard has beaten since the last ping: a
// shard stuck in one task, or a thread that never gets the CPU, stops the
// pings and systemd restarts the service. The main thread alone being alive
// proves nothing about the data path.

#include "server/heartbeat.hh"

#include <chrono>
#include <optional>
#include <vector>

namespace shardd::server {

class service_watchdog {
public:
    // From $WATCHDOG_USEC, when it is set and $WATCHDOG_PID is unset or names
    // this process (otherwise the variables were meant for another process).
    // nullopt: no watchdog asked for. A malformed value is logged and ignored.
    static std::optional<service_watchdog> from_environment();

    explicit service_watchdog(std::chrono::microseconds interval);

    std::chrono::microseconds interval() const noexcept { return _interval; }
    // When the next check is due (steady_clock).
    std::chrono::steady_clock::time_point next_check() const noexcept { return _next; }
    // Due at next_check(): sends WATCHDOG=1 if every shard beat within the
    // freshness bound, or unconditionally while `draining` (the shards stop
    // beating during their drain, which the main thread bounds itself). Logs
    // once when it starts withholding the pings, naming the shards, and once
    // when they answer again. Returns whether it pinged.
    bool check(const std::vector<shard_heartbeat>& beats, bool draining);
    // How recent a shard's beat must be for a ping: half the interval, but at
    // least two heartbeat periods, so a short WatchdogSec= cannot outrun the
    // beats themselves.
    std::chrono::nanoseconds freshness() const noexcept;

private:
    std::chrono::microseconds _interval;
    std::chrono::steady_clock::time_point _next;
    bool _withholding = false;
};

}  // namespace shardd::server

#include "server/watchdog.hh"

#include "server/sd_notify.hh"

#include <cstdlib>
#include <cstring>
#include <spdlog/spdlog.h>
#include <string>
#include <unistd.h>

namespace shardd::server {

namespace {

std::string list(const std::vector<unsigned>& shards) {
    std::string s;
    for (unsigned id : shards) {
        s += (s.empty() ? "" : ", ") + std::to_string(id);
    }
    return s;
}

}  // namespace

std::optional<service_watchdog> service_watchdog::from_environment() {
    const char* usec = std::getenv("WATCHDOG_USEC");
    if (!usec || !*usec) {
        return std::nullopt;
    }
    if (const char* pid = std::getenv("WATCHDOG_PID"); pid && *pid) {
        const auto p = parse_env_number(pid);
        if (!p || *p != static_cast<unsigned long long>(getpid())) {
            return std::nullopt;
        }
    }
    const auto v = parse_env_number(usec);
    if (!v || *v == 0) {
        spdlog::warn("watchdog: WATCHDOG_USEC={} is not a positive number of microseconds; no watchdog", usec);
        return std::nullopt;
    }
    return service_watchdog(std::chrono::microseconds(*v));
}

service_watchdog::service_watchdog(std::chrono::microseconds interval)
    : _interval(interval), _next(std::chrono::steady_clock::now() + interval / 2) {}

std::chrono::nanoseconds service_watchdog::freshness() const noexcept {
    return std::max<std::chrono::nanoseconds>(_interval / 2, 2 * heartbeat_period);
}

bool service_watchdog::check(const std::vector<shard_heartbeat>& beats, bool draining) {
    _next = std::chrono::steady_clock::now() + _interval / 2;
    const std::vector<unsigned> late = draining ? std::vector<unsigned>{} : late_shards(beats, freshness());
    if (!late.empty()) {
        if (!_withholding) {
            _withholding = true;
            const std::string which = std::string(late.size() == 1 ? "shard " : "shards ") + list(late);
            spdlog::error("watchdog: {} did not run for {} ms; withholding WATCHDOG=1, systemd restarts the "
                          "service after WatchdogSec={} ms unless {} recover{}",
                          which, std::chrono::duration_cast<std::chrono::milliseconds>(freshness()).count(),
                          std::chrono::duration_cast<std::chrono::milliseconds>(_interval).count(),
                          late.size() == 1 ? "it" : "they", late.size() == 1 ? "s" : "");
            sd_notify("STATUS=" + which + " not running; watchdog pings withheld");
        }
        return false;
    }
    if (_withholding) {
        _withholding = false;
        spdlog::warn("watchdog: every shard runs again; WATCHDOG=1 resumes");
        sd_notify("STATUS=serving; every shard runs again");
    }
    sd_notify("WATCHDOG=1");
    return true;
}

}  // namespace shardd::server

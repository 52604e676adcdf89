#include "server/reload.hh"

#include "server/logging.hh"
#include "server/sd_notify.hh"

#include "reactor/cpu_set.hh"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

namespace shardd::server {

namespace {

std::string joined(const std::vector<std::string>& items) {
    std::string s;
    for (const auto& i : items) {
        s += (s.empty() ? "" : ", ") + i;
    }
    return s;
}

// One line on what the reload changes in listeners and upstreams.
std::string describe_changes(const config::config& running, const config::config& next) {
    std::vector<std::string> changes;
    for (const auto& l : next.listeners) {
        const auto it = std::find_if(running.listeners.begin(), running.listeners.end(),
                                     [&](const config::listener_config& r) { return r.name == l.name; });
        if (it == running.listeners.end()) {
            changes.push_back("listener " + l.name + " added");
        } else if (it->listen != l.listen) {
            changes.push_back("listener " + l.name + " moves to new addresses");
        } else if (!(*it == l)) {
            changes.push_back("listener " + l.name + " changed");
        }
    }
    for (const auto& r : running.listeners) {
        if (std::none_of(next.listeners.begin(), next.listeners.end(),
                         [&](const config::listener_config& l) { return l.name == r.name; })) {
            changes.push_back("listener " + r.name + " removed");
        }
    }
    for (const auto& u : next.upstreams) {
        const config::upstream_config* r = running.find_upstream(u.name);
        if (!r) {
            changes.push_back("upstream " + u.name + " added");
        } else if (!(*r == u)) {
            changes.push_back("upstream " + u.name + " changed");
        }
    }
    for (const auto& r : running.upstreams) {
        if (!next.find_upstream(r.name)) {
            changes.push_back("upstream " + r.name + " removed");
        }
    }
    return joined(changes);
}

}  // namespace

std::vector<std::string> restart_only_changes(const config::config& running, const config::config& next) {
    std::vector<std::string> keys;
    const auto& a = running.runtime;
    const auto& b = next.runtime;
    auto check = [&](bool same, const char* key) {
        if (!same) {
            keys.emplace_back(key);
        }
    };
    check(a.all_cpus == b.all_cpus && a.cpus == b.cpus, "runtime.cpus");
    check(a.backend == b.backend, "runtime.backend");
    check(a.io_memory == b.io_memory, "runtime.io_memory");
    check(a.ring_entries == b.ring_entries, "runtime.ring_entries");
    check(a.spin_before_park == b.spin_before_park, "runtime.spin_before_park");
    check(a.preempt_timer == b.preempt_timer, "runtime.preempt_timer");
    check(a.stall_threshold == b.stall_threshold, "runtime.stall_threshold");
    check(a.shutdown_timeout == b.shutdown_timeout, "runtime.shutdown_timeout");
    check(a.recv_buffer_size == b.recv_buffer_size, "runtime.recv_buffer_size");
    check(a.recv_buffers == b.recv_buffers, "runtime.recv_buffers");
    check(running.admin == next.admin, "admin.listen");
    check(running.access_log == next.access_log, "access_log");
    return keys;
}

bool send_to_shards(std::vector<shard_control>& controls, std::vector<shard_reload>& plans, int ack_fd) {
    // Acknowledgements that came after an earlier reload gave up on them.
    std::uint64_t stale = 0;
    while (::read(ack_fd, &stale, sizeof(stale)) == sizeof(stale)) {
    }
    const std::uint64_t one = 1;
    for (std::size_t s = 0; s < controls.size(); ++s) {
        controls[s].reload.store(&plans[s], std::memory_order_release);
        if (::write(controls[s].wake_fd, &one, sizeof(one)) != sizeof(one)) {
            spdlog::error("reload: cannot wake shard {}: {}", s, std::strerror(errno));
        }
    }
    std::size_t acked = 0;
    const auto deadline = std::chrono::steady_clock::now() + reload_ack_timeout;
    while (acked < controls.size()) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{ack_fd, POLLIN, 0};
        const int rc = poll(&p, 1, static_cast<int>(std::max<std::int64_t>(0, left.count())));
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (rc <= 0) {
            break;
        }
        std::uint64_t n = 0;
        if (::read(ack_fd, &n, sizeof(n)) == sizeof(n)) {
            acked += n;
        }
    }
    if (acked < controls.size()) {
        std::vector<std::string> late;
        for (std::size_t s = 0; s < controls.size(); ++s) {
            // A plan still in its mailbox was never taken. Take it back, so
            // that it cannot be applied after the plans are gone.
            shard_reload* expected = &plans[s];
            if (controls[s].reload.compare_exchange_strong(expected, nullptr)) {
                late.push_back(std::to_string(s));
            }
        }
        spdlog::error("reload: shard{} {} did not take the new configuration within {} s", late.size() == 1 ? "" : "s",
                      joined(late), reload_ack_timeout.count());
        return late.empty();
    }
    return true;
}

bool reload(reload_context& ctx) {
    sd_notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()));
    struct ready_at_end {
        ~ready_at_end() { sd_notify("READY=1"); }
    } ready;
    auto allowed = allowed_cpus();
    auto result = config::load_file(ctx.config_path, ctx.over, allowed ? *allowed : ctx.shard_cpus);
    for (const auto& d : result.diagnostics) {
        if (d.level == config::severity::error) {
            spdlog::error("reload: {}", d.to_string());
        } else {
            spdlog::warn("reload: {}", d.to_string());
        }
    }
    if (!result.ok()) {
        spdlog::error("reload failed: keeping the running configuration");
        return false;
    }
    const auto running = ctx.live->current();
    auto next = std::make_shared<config::config>(std::move(*result.cfg));
    const std::vector<std::string> refused = restart_only_changes(*running, *next);
    next->runtime = running->runtime;
    next->admin = running->admin;
    next->access_log = running->access_log;
    // [log] first, so that what follows is logged the new way.
    if (!(next->log == running->log)) {
        setup_logging(next->log.level, next->log.format);
        spdlog::info("reload: log level {}, format {}", config::to_string(next->log.level),
                     config::to_string(next->log.format));
    }
    if (!refused.empty()) {
        spdlog::warn("reload: {} need{} a restart: keeping the running value{}; applying the rest", joined(refused),
                     refused.size() == 1 ? "s" : "", refused.size() == 1 ? "" : "s");
    }
    if (config::to_toml(*next) == config::to_toml(*running)) {
        if (refused.empty()) {
            spdlog::info("reload: configuration unchanged");
        }
        return true;
    }
    const std::string changes = describe_changes(*running, *next);
    std::vector<inherited_socket> none;
    auto plans = ctx.live->prepare(next, none);
    if (!plans) {
        spdlog::error("reload failed: {}; keeping the running configuration", plans.error());
        if (!(next->log == running->log)) {
            setup_logging(running->log.level, running->log.format);
        }
        return false;
    }
    ctx.live->commit();
    auto owned = std::make_unique<std::vector<shard_reload>>(std::move(*plans));
    const bool all = send_to_shards(*ctx.controls, *owned, ctx.ack_fd);
    if (!all) {
        ctx.unacknowledged.push_back(std::move(owned));
    }
    if (!changes.empty()) {
        spdlog::info("reload: applied: {}", changes);
    }
    return all;
}

}  // namespace shardd::server

#include "server/daemon.hh"

#include "server/admin/admin_server.hh"

#include "server/cli.hh"
#include "server/live_config.hh"
#include "server/logging.hh"
#include "server/reload.hh"
#include "server/sd_notify.hh"
#include "server/shard_service.hh"
#include "server/watchdog.hh"

#include "reactor/executor_pool.hh"
#include "reactor/io.hh"
#include "reactor/probe.hh"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <latch>
#include <optional>
#include <poll.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <string_view>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <thread>
#include <unistd.h>

namespace shardd::server {

namespace {

using namespace std::chrono_literals;

// How long past shutdown_timeout the main thread waits for the shards to
// report that they drained. Each shard bounds its own drain by
// shutdown_timeout plus 2 s (shard_service.cc); this is the main thread's
// own deadline, for a shard that cannot get there.
constexpr std::chrono::nanoseconds main_drain_grace = 5s;
// Once the main thread stops the pool after a drain, how long the process
// may take to get out before it exits regardless.
constexpr std::chrono::nanoseconds stop_watchdog = 5s;

// A shard's main task: log what the kernel gave this shard, then serve its
// share of the listeners until drained. READY=1 goes to systemd only once
// every shard serves.
task<void> shard_main(shard_plan plan) {
    set_thread_label("shard " + std::to_string(plan.id));
    executor* ex = executor::current();
    if (ex->uses_epoll()) {
        spdlog::info("started on CPU {}; backend epoll", sched_getcpu());
    } else {
        spdlog::info("started on CPU {}; backend io_uring, rings: main {}, latency {}, poll {}", sched_getcpu(),
                     ex->main_ring().describe_flags(), ex->latency_ring().describe_flags(),
                     ex->poll_ring().describe_flags());
    }
    if (plan.backend) {
        plan.backend->name = ex->backend_name();
        plan.backend->fallback_reason = ex->fallback_reason();
        plan.backend->ring_flags = ex->uses_epoll() ? "" : ex->main_ring().describe_flags();
    }
    struct on_stop {
        ~on_stop() { spdlog::info("stopped"); }
    } log_stop;
    co_await run_shard(plan);
}

// Descriptors: a server holds one per connection, and the soft limit
// (1024 under systemd) is far below what max_connections allows. Raise it to
// the hard limit, as nginx's worker_rlimit_nofile and Go's runtime do.
void raise_fd_limit() {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) {
        return;
    }
    const rlim_t before = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
        spdlog::debug("file descriptor limit raised from {} to {}", before, rl.rlim_max);
    }
}

backend_choice backend_of(config::io_backend b) {
    switch (b) {
    case config::io_backend::automatic: return backend_choice::automatic;
    case config::io_backend::io_uring: return backend_choice::io_uring;
    case config::io_backend::epoll: return backend_choice::epoll;
    }
    return backend_choice::automatic;
}

executor_builder builder_from(const config::runtime_config& rt) {
    return executor_builder()
        .name("shardd")
        .backend(backend_of(rt.backend))
        .io_memory(rt.io_memory)
        .ring_entries(rt.ring_entries)
        .spin_before_park(rt.spin_before_park)
        .preempt_timer(rt.preempt_timer)
        .stall_threshold(rt.stall_threshold);
}

void log_settings(const config::config& cfg, const cpu_set& cpus, const std::string& path) {
    spdlog::info("shardd {} starting: config {}, {} shard{} on CPU{} {}", SHARDD_VERSION, path, cpus.size(),
                 cpus.size() == 1 ? "" : "s", cpus.size() == 1 ? "" : "s", cpus.to_string());
    const auto& rt = cfg.runtime;
    spdlog::info("runtime: backend {}, io_memory {}, ring_entries {}, spin_before_park {}, preempt_timer {}, "
                 "stall_threshold {}, shutdown_timeout {}, recv buffers {} x {}",
                 config::to_string(rt.backend), config::format_size(rt.io_memory), rt.ring_entries,
                 config::format_duration(rt.spin_before_park), config::format_duration(rt.preempt_timer),
                 config::format_duration(rt.stall_threshold), config::format_duration(rt.shutdown_timeout),
                 rt.recv_buffers, config::format_size(rt.recv_buffer_size));
    for (const auto& l : cfg.listeners) {
        std::string addrs;
        for (const auto& a : l.listen) {
            if (!addrs.empty()) {
                addrs += ' ';
            }
            addrs += a.to_string();
        }
        const std::string what = l.mode == config::listener_mode::echo
                                     ? "echo/" + std::string(config::to_string(l.protocol))
                                     : "proxy to " + l.upstream;
        // The controls, only where set: a plain listener's line stays short.
        std::string controls;
        if (l.accept_proxy) {
            controls += ", PROXY headers from " + std::to_string(l.proxy_trusted.size()) + " trusted block" +
                        (l.proxy_trusted.size() == 1 ? "" : "s");
        }
        if (!l.allow.empty() || !l.deny.empty()) {
            controls += ", allow " + (l.allow.empty() ? std::string("all") : std::to_string(l.allow.size())) +
                        " deny " + std::to_string(l.deny.size());
        }
        if (l.max_connections_per_source != 0) {
            controls += ", " + std::to_string(l.max_connections_per_source) + " connections per source";
        }
        if (l.connection_rate_per_source != 0) {
            controls += ", " + std::to_string(l.connection_rate_per_source) + " new connections/s per source";
        }
        spdlog::info("listener {}: {} on {}, max_connections {}, idle_timeout {}{}", l.name, what, addrs,
                     l.max_connections, config::format_duration(l.idle_timeout), controls);
    }
    for (const auto& up : cfg.upstreams) {
        std::string servers;
        for (const auto& a : up.servers) {
            if (!servers.empty()) {
                servers += ' ';
            }
            servers += a.address.to_string();
            if (a.weight != 1) {
                servers += "(weight " + std::to_string(a.weight) + ")";
            }
            servers += a.backup ? "(backup)" : "";
            servers += a.drain ? "(drain)" : "";
        }
        std::string extra;
        if (up.proxy_protocol != config::proxy_protocol_version::none) {
            extra += ", PROXY " + std::string(config::to_string(up.proxy_protocol));
        }
        if (up.health_check.enabled) {
            extra += ", checks every " + config::format_duration(up.health_check.interval) +
                     (up.health_check.expect.empty() ? " (connect)" : " (send/expect)");
        }
        spdlog::info("upstream {}: {} over {}{}", up.name, config::to_string(up.balance), servers, extra);
    }
}

// The access log's target, opened by the main thread: -1 when it is off,
// stderr, or the file (appended, created 0640).
expected<int, std::string> open_access_log(const config::access_log_config& c) {
    if (c.path.empty()) {
        return -1;
    }
    if (c.path == "stderr") {
        return STDERR_FILENO;
    }
    const int fd = ::open(c.path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        return unexpected{"access_log.path: cannot open " + c.path + ": " + std::strerror(errno)};
    }
    return fd;
}

// One descriptor per shard for the access log target (each shard closes
// its own): stderr is shared and never closed.
int access_log_fd_for_shard(int target) {
    if (target < 0 || target == STDERR_FILENO) {
        return target;
    }
    return fcntl(target, F_DUPFD_CLOEXEC, 0);
}

// SIGUSR1: the file opened anew (logrotate moved the old one away), handed
// to every shard's writer, which switches between two writes.
void reopen_access_log(const config::access_log_config& c, std::vector<access_log_reopen>& slots) {
    if (c.path.empty() || c.path == "stderr") {
        spdlog::info("SIGUSR1 received: {}", c.path.empty() ? "no access log to reopen"
                                                            : "the access log goes to "
                                                              "stderr, nothing to reopen");
        return;
    }
    auto fd = open_access_log(c);
    if (!fd) {
        spdlog::error("SIGUSR1 received: {}; the shards keep writing to the old file", fd.error());
        return;
    }
    for (auto& slot : slots) {
        const int old = slot.fd.exchange(access_log_fd_for_shard(*fd), std::memory_order_release);
        if (old >= 0) {
            ::close(old);  // an earlier reopen no shard took yet
        }
    }
    ::close(*fd);
    spdlog::info("SIGUSR1 received: access log {} reopened", c.path);
}

// eventfds between the main thread and the shards: each shard's mailbox
// bell (shard_control::wake_fd), the one the shards count their reload
// acknowledgements on, and the one they count their exits on.
struct shard_signals {
    std::vector<shard_control> controls;
    int reload_ack = -1;
    int done = -1;
    explicit shard_signals(std::size_t shards) : controls(shards) {}
    ~shard_signals() {
        for (auto& c : controls) {
            if (c.wake_fd >= 0) {
                close(c.wake_fd);
            }
        }
        for (int fd : {reload_ack, done}) {
            if (fd >= 0) {
                close(fd);
            }
        }
    }
    bool create() {
        done = eventfd(0, EFD_CLOEXEC);
        reload_ack = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        bool ok = done >= 0 && reload_ack >= 0;
        for (auto& c : controls) {
            c.wake_fd = eventfd(0, EFD_CLOEXEC);
            ok = ok && c.wake_fd >= 0;
        }
        return ok;
    }
    void start_drain() {
        const std::uint64_t one = 1;
        for (auto& c : controls) {
            c.drain.store(true, std::memory_order_release);
            if (::write(c.wake_fd, &one, sizeof(one)) != sizeof(one)) {
                spdlog::error("cannot signal a shard to drain: {}", std::strerror(errno));
            }
        }
    }
};

void log_counters(const std::vector<shard_counters>& counters) {
    std::uint64_t accepted = 0;
    std::uint64_t bytes_in = 0;
    std::uint64_t bytes_out = 0;
    for (const auto& c : counters) {
        accepted += c.accepted.get();
        bytes_in += c.bytes_in.get();
        bytes_out += c.bytes_out.get();
    }
    // Over every socket of every listener: an echo's bytes in come back
    // out (sockperf answers only what asks for it); a proxied pair counts
    // what it read from either end as in, what it wrote to either end as out.
    spdlog::info("served {} connection{}: {} bytes received, {} bytes sent", accepted, accepted == 1 ? "" : "s",
                 bytes_in, bytes_out);
}

}  // namespace

std::string backend_forecast(config::io_backend wanted) {
    const std::string asked = "runtime.backend = \"" + std::string(config::to_string(wanted)) + "\"";
    if (wanted == config::io_backend::epoll) {
        return "backend: epoll (" + asked + ")";
    }
    std::string why = asked;
    bool io_uring_only = wanted == config::io_backend::io_uring;
    if (wanted == config::io_backend::automatic) {
        // The reactor's override of "auto" (reactor/executor.hh), so that
        // --check tells what the daemon would do in the same environment.
        const char* env = std::getenv("SHARDD_BACKEND");
        const std::string_view over = env ? env : "";
        if (over == "epoll") {
            return "backend: epoll (" + asked + ", overridden by SHARDD_BACKEND=epoll)";
        }
        if (over == "io_uring") {
            why += ", overridden by SHARDD_BACKEND=io_uring";
            io_uring_only = true;
        }
    }
    const auto unusable = io_uring_unusable_reason();
    if (!unusable) {
        return "backend: io_uring (" + why + "; io_uring is usable here)";
    }
    if (io_uring_only) {
        return "backend: none, shardd would not start here (" + why +
               ", and io_uring is not usable here: " + *unusable + ")";
    }
    return "backend: epoll (" + why + "; io_uring is not usable here: " + *unusable + ")";
}

int run_daemon(config::config cfg, const cpu_set& cpus, const daemon_options& opts) {
    const auto process_start = std::chrono::system_clock::now();
    log_settings(cfg, cpus, opts.config_path);
    raise_fd_limit();

    // Block the signals we handle before any thread starts, so every thread
    // inherits the mask and they all arrive at the signalfd below.
    sigset_t handled;
    sigemptyset(&handled);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) {
        sigaddset(&handled, sig);
    }
    if (int rc = pthread_sigmask(SIG_BLOCK, &handled, nullptr); rc != 0) {
        spdlog::critical("cannot block signals: {}", std::strerror(rc));
        return exit_failure;
    }
    // Peers that vanish must not kill the daemon with SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    const int sfd = signalfd(-1, &handled, SFD_CLOEXEC);
    if (sfd < 0) {
        spdlog::critical("signalfd: {}", std::strerror(errno));
        return exit_failure;
    }
    struct close_fd {
        int fd;
        ~close_fd() { close(fd); }
    } close_sfd{sfd};

    const std::size_t shards = cpus.size();
    shard_signals signals(shards);
    if (!signals.create()) {
        spdlog::critical("eventfd: {}", std::strerror(errno));
        return exit_failure;
    }
    auto inherited = take_inherited_sockets();
    if (!inherited) {
        spdlog::critical("{}", inherited.error());
        return exit_failure;
    }
    if (!inherited->empty()) {
        spdlog::info("socket activation: {} socket{} from systemd", inherited->size(),
                     inherited->size() == 1 ? "" : "s");
    }
    // What runs: the first configuration, and each listener's sockets.
    const auto boot = std::make_shared<const config::config>(std::move(cfg));
    live_config live(shards);
    auto initial = live.prepare(boot, *inherited);
    if (!initial) {
        spdlog::critical("{}", initial.error());
        return exit_failure;
    }
    live.commit();

    auto access_target = open_access_log(boot->access_log);
    if (!access_target) {
        spdlog::critical("{}", access_target.error());
        return exit_failure;
    }
    std::vector<access_log_reopen> access_reopen(shards);
    std::vector<int> access_fds;
    for (std::size_t s = 0; s < shards; ++s) {
        access_fds.push_back(access_log_fd_for_shard(*access_target));
    }
    if (*access_target >= 0 && *access_target != STDERR_FILENO) {
        ::close(*access_target);
    }
    if (!boot->access_log.path.empty()) {
        spdlog::info("access log: {}, {}", boot->access_log.path, config::to_string(boot->access_log.format));
    }

    std::vector<shard_counters> counters(shards);
    std::vector<shard_heartbeat> heartbeats(shards);
    std::vector<reactor_stats> reactors(shards);
    shard_backend backend;
    std::atomic<admin::daemon_phase> phase{admin::daemon_phase::starting};
    std::vector<std::string> errors(shards);
    std::latch shards_up(static_cast<std::ptrdiff_t>(shards));
    auto pool = executor_pool::start(cpus, builder_from(boot->runtime), [&](unsigned id) {
        shard_plan plan;
        plan.id = id;
        plan.runtime = &boot->runtime;
        plan.initial = &(*initial)[id];
        plan.counters = &counters[id];
        plan.control = &signals.controls[id];
        plan.reload_ack_fd = signals.reload_ack;
        plan.done_fd = signals.done;
        plan.up = &shards_up;
        plan.error = &errors[id];
        plan.heartbeat = &heartbeats[id];
        plan.reactor = &reactors[id];
        plan.backend = id == 0 ? &backend : nullptr;
        plan.access_log_fd = access_fds[id];
        plan.access_log_format = boot->access_log.format;
        plan.access_reopen = &access_reopen[id];
        return shard_main(plan);
    });
    if (!pool) {
        spdlog::critical("cannot start the shards: {}", pool.error());
        return exit_failure;
    }
    shards_up.wait();
    for (std::size_t i = 0; i < shards; ++i) {
        if (!errors[i].empty()) {
            spdlog::critical("shard {}: {}", i, errors[i]);
            (*pool)->stop();
            return exit_failure;
        }
    }
    // Once for the process, not per shard: every shard fell back for the
    // same reason.
    if (!backend.fallback_reason.empty()) {
        spdlog::warn("io_uring is not usable here ({}): running on the epoll backend (runtime.backend = \"auto\"); "
                     "set runtime.backend = \"io_uring\" to refuse to start instead",
                     backend.fallback_reason);
    }
    // The admin endpoint, before READY: a service manager or orchestrator
    // that probes it once told "ready" finds it there.
    std::unique_ptr<admin::admin_server> admin_endpoint;
    if (boot->admin.listen) {
        admin::admin_sources src;
        src.live = &live;
        src.counters = &counters;
        src.heartbeats = &heartbeats;
        src.reactors = &reactors;
        src.phase = &phase;
        src.started = process_start;
        src.backend = backend.name;
        src.ring_flags = backend.ring_flags;
        src.shard_cpus = cpus;
        auto a = admin::admin_server::start(*boot->admin.listen, src);
        if (!a) {
            spdlog::critical("{}", a.error());
            (*pool)->stop();
            return exit_failure;
        }
        admin_endpoint = std::move(*a);
        spdlog::info("admin endpoint: listening on {} (/metrics /healthz /readyz /stats /config)",
                     admin_endpoint->address().to_string());
    }
    // systemd's watchdog, when the unit has WatchdogSec=: the first ping
    // comes half an interval after READY=1.
    std::optional<service_watchdog> watchdog = service_watchdog::from_environment();
    if (watchdog) {
        spdlog::info("watchdog: WATCHDOG=1 every {} ms while every shard runs (WatchdogSec={} ms)",
                     std::chrono::duration_cast<std::chrono::milliseconds>(watchdog->interval() / 2).count(),
                     std::chrono::duration_cast<std::chrono::milliseconds>(watchdog->interval()).count());
    }

    phase = admin::daemon_phase::ready;
    spdlog::info("ready: {} shard{} running on {}", (*pool)->size(), (*pool)->size() == 1 ? "" : "s", backend.name);
    sd_notify("READY=1\nSTATUS=serving on " + std::to_string((*pool)->size()) +
              " shards\nMAINPID=" + std::to_string(getpid()));

    reload_context reload_ctx;
    reload_ctx.live = &live;
    reload_ctx.controls = &signals.controls;
    reload_ctx.ack_fd = signals.reload_ack;
    reload_ctx.config_path = opts.config_path;
    reload_ctx.over = opts.over;
    reload_ctx.shard_cpus = cpus;

    // Until a stop signal: signals and the watchdog's checks. Then, while the
    // shards drain: also the shards' exits (a second SIGTERM/SIGINT stops at
    // once).
    int status = exit_ok;
    bool draining = false;
    std::chrono::steady_clock::time_point drain_deadline{};
    std::uint64_t shards_done = 0;
    while (shards_done < shards) {
        pollfd fds[2] = {{sfd, POLLIN, 0}, {signals.done, POLLIN, 0}};
        std::optional<std::chrono::steady_clock::time_point> wake;
        if (draining) {
            wake = drain_deadline;
        }
        if (watchdog && (!wake || watchdog->next_check() < *wake)) {
            wake = watchdog->next_check();
        }
        int timeout_ms = -1;
        if (wake) {
            const auto left = *wake - std::chrono::steady_clock::now();
            timeout_ms =
                static_cast<int>(std::max<std::int64_t>(0, std::chrono::ceil<std::chrono::milliseconds>(left).count()));
        }
        const int ready = poll(fds, draining ? 2 : 1, timeout_ms);
        const auto now = std::chrono::steady_clock::now();
        if (watchdog && now >= watchdog->next_check()) {
            watchdog->check(heartbeats, draining);
        }
        if (draining && now >= drain_deadline) {
            // A shard that has not ended by now is stuck: its own drain is
            // bounded by shutdown_timeout plus drain_abort_bound.
            spdlog::error("shards did not finish draining within shutdown_timeout + {}; stopping them",
                          config::format_duration(main_drain_grace));
            status = exit_failure;
            break;
        }
        if (ready == 0) {
            continue;
        }
        if (ready < 0) {
            if (errno == EINTR) {
                continue;
            }
            spdlog::critical("poll: {}", std::strerror(errno));
            status = exit_failure;
            break;
        }
        if (draining && (fds[1].revents & POLLIN)) {
            std::uint64_t n = 0;
            if (::read(signals.done, &n, sizeof(n)) == sizeof(n)) {
                shards_done += n;
            }
        }
        if (!(fds[0].revents & POLLIN)) {
            continue;
        }
        signalfd_siginfo si{};
        const ssize_t n = ::read(sfd, &si, sizeof(si));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n != static_cast<ssize_t>(sizeof(si))) {
            spdlog::critical("signalfd read: {}", std::strerror(errno));
            status = exit_failure;
            break;
        }
        const int sig = static_cast<int>(si.ssi_signo);
        if (sig == SIGINT || sig == SIGTERM) {
            if (draining) {
                spdlog::warn("SIG{} received again: stopping now", sigabbrev_np(sig));
                break;
            }
            spdlog::info("SIG{} received: draining (shutdown_timeout {})", sigabbrev_np(sig),
                         config::format_duration(boot->runtime.shutdown_timeout));
            sd_notify("STOPPING=1");
            phase = admin::daemon_phase::draining;
            draining = true;
            drain_deadline = std::chrono::steady_clock::now() + boot->runtime.shutdown_timeout + main_drain_grace;
            signals.start_drain();
        } else if (sig == SIGHUP) {
            if (draining) {
                spdlog::info("SIGHUP received while draining: ignored");
            } else {
                spdlog::info("SIGHUP received: reloading {}", opts.config_path);
                reload(reload_ctx);
            }
        } else if (sig == SIGUSR1) {
            reopen_access_log(boot->access_log, access_reopen);
        }
    }
    if (draining) {
        // The last resort, should a shard's thread be stuck where a stop
        // request cannot reach it: stopping the pool joins every thread.
        std::thread([] {
            std::this_thread::sleep_for(stop_watchdog);
            spdlog::critical("the shards did not stop within {}: exiting", config::format_duration(stop_watchdog));
            spdlog::shutdown();
            std::_Exit(exit_failure);
        }).detach();
    }
    (*pool)->stop();
    if (admin_endpoint) {
        admin_endpoint->stop();
    }
    log_counters(counters);
    spdlog::info("stopped");
    return status;
}

}  // namespace shardd::server

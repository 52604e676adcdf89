#include "server/daemon.hh"

#include "server/cli.hh"
#include "server/logging.hh"
#include "server/sd_notify.hh"

#include "reactor/executor_pool.hh"
#include "reactor/io.hh"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <latch>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/signalfd.h>
#include <unistd.h>

namespace shardd::server {

namespace {

// A shard's main task until the services of later issues run here: log what
// the kernel gave this shard, say it is up, then wait for the pool to stop
// it. READY=1 goes to systemd only once every shard has said so.
task<void> shard_main(unsigned id, std::latch& up) {
    set_thread_label("shard " + std::to_string(id));
    executor* ex = executor::current();
    spdlog::info("started on CPU {}; rings: main {}, latency {}, poll {}", sched_getcpu(),
                 ex->main_ring().describe_flags(), ex->latency_ring().describe_flags(),
                 ex->poll_ring().describe_flags());
    // Parked until stop: the pool's request_stop() ends the run loop and
    // this frame is destroyed with the executor, on this thread.
    struct on_stop {
        ~on_stop() { spdlog::info("stopped"); }
    } log_stop;
    up.count_down();
    co_await sleep_for(std::chrono::hours(24 * 365));
}

executor_builder builder_from(const config::runtime_config& rt) {
    return executor_builder()
        .name("shardd")
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
    spdlog::info("runtime: io_memory {}, ring_entries {}, spin_before_park {}, preempt_timer {}, "
                 "stall_threshold {}, shutdown_timeout {}, recv buffers {} x {}",
                 config::format_size(rt.io_memory), rt.ring_entries, config::format_duration(rt.spin_before_park),
                 config::format_duration(rt.preempt_timer), config::format_duration(rt.stall_threshold),
                 config::format_duration(rt.shutdown_timeout), rt.recv_buffers,
                 config::format_size(rt.recv_buffer_size));
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
        spdlog::info("listener {}: {} on {}, max_connections {}, idle_timeout {}", l.name, what, addrs,
                     l.max_connections, config::format_duration(l.idle_timeout));
    }
    for (const auto& up : cfg.upstreams) {
        std::string servers;
        for (const auto& a : up.servers) {
            if (!servers.empty()) {
                servers += ' ';
            }
            servers += a.to_string();
        }
        spdlog::info("upstream {}: {} over {}", up.name, config::to_string(up.balance), servers);
    }
    if (cfg.admin.listen) {
        spdlog::info("admin endpoint: {}", cfg.admin.listen->to_string());
    }
}

// SIGHUP: read the file again; apply what can change live, keep the running
// config when the new one is bad.
void reload(config::config& running, const cpu_set& shard_cpus, const daemon_options& opts) {
    sd_notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()));
    auto allowed = allowed_cpus();
    auto result = config::load_file(opts.config_path, opts.over, allowed ? *allowed : shard_cpus);
    for (const auto& d : result.diagnostics) {
        if (d.level == config::severity::error) {
            spdlog::error("reload: {}", d.to_string());
        } else {
            spdlog::warn("reload: {}", d.to_string());
        }
    }
    if (!result.ok()) {
        spdlog::error("reload failed: keeping the running configuration");
    } else {
        config::config next = std::move(*result.cfg);
        const bool log_changed = next.log.level != running.log.level || next.log.format != running.log.format;
        if (log_changed) {
            setup_logging(next.log.level, next.log.format);
            running.log = next.log;
            spdlog::info("reload: log level {}, format {}", config::to_string(running.log.level),
                         config::to_string(running.log.format));
        }
        // Only [log] applies live; say so when the file changed anything else.
        next.log = running.log;
        if (config::to_toml(next) != config::to_toml(running)) {
            spdlog::warn("reload: changes outside [log] take effect on restart");
        } else if (!log_changed) {
            spdlog::info("reload: configuration unchanged");
        }
    }
    sd_notify("READY=1");
}

}  // namespace

int run_daemon(config::config cfg, const cpu_set& cpus, const daemon_options& opts) {
    log_settings(cfg, cpus, opts.config_path);

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

    std::latch shards_up(static_cast<std::ptrdiff_t>(cpus.size()));
    auto pool = executor_pool::start(cpus, builder_from(cfg.runtime),
                                     [&shards_up](unsigned id) { return shard_main(id, shards_up); });
    if (!pool) {
        spdlog::critical("cannot start the shards: {}", pool.error());
        close(sfd);
        return exit_failure;
    }
    shards_up.wait();
    spdlog::info("ready: {} shard{} running", (*pool)->size(), (*pool)->size() == 1 ? "" : "s");
    sd_notify("READY=1\nSTATUS=serving on " + std::to_string((*pool)->size()) +
              " shards\nMAINPID=" + std::to_string(getpid()));

    int status = exit_ok;
    for (bool running = true; running;) {
        signalfd_siginfo si{};
        const ssize_t n = read(sfd, &si, sizeof(si));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n != static_cast<ssize_t>(sizeof(si))) {
            spdlog::critical("signalfd read: {}", std::strerror(errno));
            status = exit_failure;
            break;
        }
        switch (si.ssi_signo) {
        case SIGINT:
        case SIGTERM:
            spdlog::info("SIG{} received: stopping", sigabbrev_np(static_cast<int>(si.ssi_signo)));
            running = false;
            break;
        case SIGHUP:
            spdlog::info("SIGHUP received: reloading {}", opts.config_path);
            reload(cfg, cpus, opts);
            break;
        case SIGUSR1: spdlog::info("SIGUSR1 received: logs go to stderr, nothing to reopen"); break;
        default: break;
        }
    }
    sd_notify("STOPPING=1");
    (*pool)->stop();
    close(sfd);
    spdlog::info("stopped");
    return status;
}

}  // namespace shardd::server
